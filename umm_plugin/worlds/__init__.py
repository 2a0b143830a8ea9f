"""ShapesWorld: scenes, renderer, GenEval-format prompts and the exact evaluator. Knows nothing of models."""
