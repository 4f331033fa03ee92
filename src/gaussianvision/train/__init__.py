"""Training: stage 1 (align the GS encoder with the frozen RGB teacher), stage 2 (CLIP loss against
captions), plain RGB CLIP from scratch; checkpoints, exact resume, DDP. See docs/training.md."""
from gaussianvision.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from gaussianvision.train.loop import TrainConfig, TrainingDiverged, train
from gaussianvision.train.batches import IndexedSource, ShardSource

__all__ = ["TrainConfig", "TrainingDiverged", "train", "CheckpointError", "latest_checkpoint", "load_checkpoint",
           "save_checkpoint", "IndexedSource", "ShardSource"]
