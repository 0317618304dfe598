"""Training machinery shared by the recipes: schedules, optimiser groups, EMA, checkpoints, distributed helpers."""
