"""The built-in synthetic dialogue-summary set: everyday two-person dialogues with templated, learnable summaries.

Shipped as `job/builtin/{train,validation,test}.jsonl` (columns `id`, `dialogue`, `summary`, `topic`, speakers tagged
`#Person1#`/`#Person2#` like DialogSum) so the smoke run needs no download. The test split has three differently
worded references per dialogue (ids `test_<i>_<k>`), as DialogSum's has. Regenerate with `python -m job.synthetic`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

BUILTIN_DIR = Path(__file__).parent / "builtin"
SPLITS = {"train": 1200, "validation": 60, "test": 60}

NAMES = [
    "Anna",
    "Ben",
    "Carla",
    "David",
    "Elena",
    "Frank",
    "Grace",
    "Hugo",
    "Iris",
    "Jack",
    "Kate",
    "Leo",
    "Maria",
    "Nick",
    "Olga",
    "Paul",
    "Rosa",
    "Sam",
    "Tina",
    "Victor",
]
CITIES = ["Paris", "Boston", "Madrid", "Tokyo", "Berlin", "Lisbon", "Chicago", "Vienna", "Dublin", "Seattle"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
TIMES = ["seven", "eight", "nine", "noon", "six", "half past five", "ten"]
ITEMS = [
    "a blue jacket",
    "running shoes",
    "a laptop bag",
    "a winter coat",
    "a coffee maker",
    "a desk lamp",
    "a phone charger",
    "a travel guide",
]
DISHES = ["fish soup", "roast chicken", "a vegetable curry", "steak", "pasta with mushrooms", "a salad"]
SYMPTOMS = ["a headache", "a sore throat", "a cough", "back pain", "a fever", "a stomach ache"]
JOBS = ["sales assistant", "accountant", "nurse", "web designer", "teacher", "driver"]
FILLER_1 = ["Good morning.", "Hi there.", "Excuse me.", "Hello.", "Sorry to bother you."]
FILLER_2 = ["Sure, how can I help?", "Yes, what can I do for you?", "Of course.", "Certainly, go ahead."]
THANKS = ["Thank you so much.", "Thanks a lot.", "Great, thanks.", "That's very kind of you."]
BYE = ["You're welcome.", "No problem. Have a nice day.", "My pleasure.", "Any time."]


def _restaurant(r: random.Random) -> tuple[list[tuple[int, str]], list[str], str]:
    n, day, time, dish = r.randint(2, 8), r.choice(DAYS), r.choice(TIMES), r.choice(DISHES)
    turns = [
        (1, f"I'd like to book a table for {n} people on {day}."),
        (2, "What time would you like to come?"),
        (1, f"At {time}, if possible."),
        (2, f"Let me check. Yes, we have a table for {n} at {time} on {day}."),
        (1, f"Wonderful. Do you still serve {dish}?"),
        (2, f"Yes, {dish} is on the menu every day."),
    ]
    refs = [
        f"#Person1# books a table for {n} people at {time} on {day} and asks about {dish}.",
        f"#Person1# reserves a table for {n} on {day} at {time}. #Person2# says {dish} is served.",
        f"#Person2# helps #Person1# book a table for {n} people on {day}.",
    ]
    return turns, refs, "restaurant"


def _shopping(r: random.Random) -> tuple[list[tuple[int, str]], list[str], str]:
    item, price, size = r.choice(ITEMS), r.randint(15, 240), r.choice(["small", "medium", "large"])
    turns = [
        (1, f"I'm looking for {item}."),
        (2, f"We have {item} over here. What size do you need?"),
        (1, f"A {size} one, please. How much is it?"),
        (2, f"It costs {price} dollars."),
        (1, "Can I pay by card?"),
        (2, "Yes, we take all cards."),
    ]
    refs = [
        f"#Person1# buys {item} in {size} for {price} dollars and pays by card.",
        f"#Person1# wants {item} in {size}. It costs {price} dollars.",
        f"#Person2# sells #Person1# a {size} {item.split(' ', 1)[1]} for {price} dollars.",
    ]
    return turns, refs, "shopping"


def _directions(r: random.Random) -> tuple[list[tuple[int, str]], list[str], str]:
    place = r.choice(["the station", "the museum", "the post office", "the library", "the hospital", "the bank"])
    minutes, street = r.randint(3, 25), r.choice(["Main Street", "Oak Avenue", "King Road", "River Lane"])
    turns = [
        (1, f"Could you tell me the way to {place}?"),
        (2, f"Go straight down {street} and turn left."),
        (1, "Is it far from here?"),
        (2, f"No, it's about {minutes} minutes on foot."),
        (1, "Can I take a bus instead?"),
        (2, "Walking is faster at this time of day."),
    ]
    refs = [
        f"#Person2# tells #Person1# the way to {place}, about {minutes} minutes on foot along {street}.",
        f"#Person1# asks how to get to {place}. #Person2# says walk down {street}.",
        f"#Person1# asks #Person2# for directions to {place}, which is {minutes} minutes away.",
    ]
    return turns, refs, "directions"


def _doctor(r: random.Random) -> tuple[list[tuple[int, str]], list[str], str]:
    symptom, days, pills = r.choice(SYMPTOMS), r.randint(2, 9), r.randint(2, 4)
    turns = [
        (2, "What seems to be the problem?"),
        (1, f"I've had {symptom} for {days} days."),
        (2, "Do you have any other symptoms?"),
        (1, "Not really, but I feel tired."),
        (2, f"Take this medicine {pills} times a day and rest."),
        (1, "Should I come back next week?"),
        (2, "Only if you don't feel better."),
    ]
    refs = [
        f"#Person1# has had {symptom} for {days} days. #Person2# prescribes medicine {pills} times a day.",
        f"#Person1# sees #Person2# about {symptom}. #Person2# tells #Person1# to rest and take medicine.",
        f"#Person2# advises #Person1#, who has {symptom}, to take medicine {pills} times a day.",
    ]
    return turns, refs, "health"


def _interview(r: random.Random) -> tuple[list[tuple[int, str]], list[str], str]:
    job, years, city = r.choice(JOBS), r.randint(1, 12), r.choice(CITIES)
    turns = [
        (2, f"Thank you for coming. Why do you want to work as a {job}?"),
        (1, f"I have worked as a {job} in {city} for {years} years and I enjoy it."),
        (2, "Why did you leave your last job?"),
        (1, "I want to grow and learn new skills."),
        (2, "When could you start?"),
        (1, f"I could start next {r.choice(DAYS)}."),
    ]
    refs = [
        f"#Person1# interviews for a {job} job with #Person2# after {years} years of work in {city}.",
        f"#Person2# interviews #Person1# for the {job} position. #Person1# worked in {city}.",
        f"#Person1#, a {job} with {years} years of experience, has a job interview with #Person2#.",
    ]
    return turns, refs, "job interview"


def _travel(r: random.Random) -> tuple[list[tuple[int, str]], list[str], str]:
    city, day, name = r.choice(CITIES), r.choice(DAYS), r.choice(NAMES)
    nights = r.randint(2, 10)
    turns = [
        (1, f"I'm flying to {city} on {day}."),
        (2, "How long are you staying?"),
        (1, f"{nights} nights."),
        (2, "Where will you stay?"),
        (1, f"With my friend {name}. She lives near the centre."),
        (2, f"Lucky you. {city} is lovely in spring."),
    ]
    refs = [
        f"#Person1# tells #Person2# about a trip to {city} on {day} for {nights} nights, staying with {name}.",
        f"#Person1# will fly to {city} on {day} and stay with {name}.",
        f"#Person1# is going to {city} for {nights} nights and will stay at {name}'s place.",
    ]
    return turns, refs, "travel"


SCENARIOS = [_restaurant, _shopping, _directions, _doctor, _interview, _travel]


def make_example(r: random.Random) -> tuple[str, list[str], str]:
    """One dialogue with its three references and topic."""
    turns, refs, topic = r.choice(SCENARIOS)(r)
    if r.random() < 0.6:  # greetings the summary must learn to ignore
        turns = [(1, r.choice(FILLER_1)), (2, r.choice(FILLER_2))] + turns
    if r.random() < 0.6:
        turns = turns + [(1, r.choice(THANKS)), (2, r.choice(BYE))]
    dialogue = "\n".join(f"#Person{who}#: {text}" for who, text in turns)
    return dialogue, refs, topic


def generate(seed: int = 1234) -> dict[str, list[dict[str, str]]]:
    """Train/validation rows use the first reference; test rows carry all three (DialogSum's layout)."""
    r = random.Random(seed)
    out: dict[str, list[dict[str, str]]] = {}
    for split, n in SPLITS.items():
        rows = []
        for i in range(n):
            dialogue, refs, topic = make_example(r)
            if split == "test":
                rows += [
                    {"id": f"test_{i}_{k + 1}", "dialogue": dialogue, "summary": ref, "topic": topic}
                    for k, ref in enumerate(refs)
                ]
            else:
                rows.append({"id": f"{split}_{i}", "dialogue": dialogue, "summary": refs[0], "topic": topic})
        out[split] = rows
    return out


def write(folder: Path = BUILTIN_DIR) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in generate().items():
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    write()
    print(f"wrote {', '.join(SPLITS)} to {BUILTIN_DIR}")
