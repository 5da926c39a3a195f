"""Run by tests/test_lightning.py as `python lightning_ddp.py OUT_DIR`: a converted DFA model trained for a
few steps by Lightning's DDP on CPU (2 processes, gloo). Lightning starts rank 1 by running this script again.

Each rank converts with its own seed (seed = rank), so its feedback matrix starts different; DDP must
broadcast rank 0's buffers when it wraps the module. Each rank saves its state before and after fit.
"""
import os
import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

import feedalign


class Module(L.LightningModule):
    def __init__(self, seed: int):
        super().__init__()
        self.model = feedalign.convert(feedalign.mlp("784-32-16-10", activation="tanh"), "dfa", seed=seed)

    def on_train_start(self):
        self.backend = torch.distributed.get_backend()  # the process group DDP set up (gloo on CPU)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ.get("LOCAL_RANK", 0))  # set by Lightning for the process it starts
    torch.manual_seed(rank)  # forward weights differ too: DDP's broadcast makes them rank 0's
    data = feedalign.data.load("mnist")
    x, y = data.train_x[:512], data.train_y[:512]
    module = Module(seed=rank)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=4, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True))
    torch.save({"rank": trainer.global_rank, "world_size": trainer.world_size, "steps": trainer.global_step,
                "backend": module.backend,
                "before": before, "after": module.model.state_dict()}, out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
