"""The offline expert: ``expert.py`` (HeuristicExpert: moves ranked by expected gain per
second, its own block choice), ``moves.py`` (the moves per block), ``trust.py`` (trust
regions of continuous fields), ``recipes.py`` (scaling rules and recipes)."""
