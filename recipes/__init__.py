"""Training and evaluation recipes, and their configs under recipes/configs/<modality>/."""
