"""Recipes: OmegaConf YAML validated against a dataclass schema."""
from kdiqa.config.loader import find_recipe, load_recipe, recipe_to_yaml, save_recipe
from kdiqa.config.schema import Recipe

__all__ = ["Recipe", "find_recipe", "load_recipe", "recipe_to_yaml", "save_recipe"]
