"""moelight's model and data under your own Lightning Trainer: train, save, reload, same logits.

python examples/lightning/plain_lightning.py OUT.ckpt [a.b=value ...]   (recipe overrides, as for `moelight fit`)
"""

import sys

import lightning as L
import torch

from moelight.data.datamodule import MoEDataModule
from moelight.recipe import load_recipe
from moelight.training.module import MoELanguageModel

recipe = load_recipe(None, sys.argv[2:])  # the embedded default recipe
data = MoEDataModule(recipe.data, seed=recipe.seed)
model = MoELanguageModel(recipe)
trainer = L.Trainer(max_steps=10, logger=False, enable_checkpointing=False, enable_progress_bar=False)
trainer.fit(model, datamodule=data)  # the LR schedule spans the Trainer's 10 steps
trainer.save_checkpoint(sys.argv[1])

loaded = MoELanguageModel.load_from_checkpoint(sys.argv[1])  # the recipe is in the checkpoint
x = data.val_dataset[0][0][None]
with torch.no_grad():
    same = torch.equal(model.eval()(x), loaded.eval()(x))
print(f"final lr {trainer.optimizers[0].param_groups[0]['lr']:.3g}; same logits after reload: {same}")
sys.exit(0 if same else 1)
