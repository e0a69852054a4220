"""Training compiled models on 1..N processes: FSDP2 (`fully_shard` per layer) under torchrun,
sharded DCP checkpoints, export to an ordinary archdsl save. See docs/training.md.

    from archdsl.train import TrainConfig, train, export_checkpoint
    train(TrainConfig(spec="specs/demo-zamba.yaml", data="mqar:seq=256,pairs=16", steps=100, rundir="runs/z"))
"""
from .checkpoint import export_checkpoint
from .config import TrainConfig
from .loop import train

__all__ = ["TrainConfig", "train", "export_checkpoint"]
