"""Training: the challenger's recipe, the trainer, the search over it, and the yardsticks it is held to.

    train        the trainer: one loop, checkpoints, DDP; `TrainConfig` is the `train:` settings plus the input size
    tune         the hyperparameter search (Optuna) and the tuned recipe each challenger trains with
    baseline     the yardsticks not of this project's design: the script CNN, ResNet-18
    distributed  the `torchrun` entry point; rank 0 reports through Dagster Pipes
"""
