"""TopKD (Top-scaled Knowledge Distillation) for Detectron2 detection and classification."""
