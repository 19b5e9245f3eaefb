"""Training: the typed config and recipes, the train loop, run state and resume, the engine, optimiser and schedule, distribution, stopping and progress."""
