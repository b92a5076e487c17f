"""dialogsum-qlora's launchers: run the job on SageMaker, as a Kaggle kernel or in docker. Never imports torch."""
