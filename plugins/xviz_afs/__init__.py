"""AFDS: attention feature selection gates and distillation (work in progress: registers nothing yet)."""
