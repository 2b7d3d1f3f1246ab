"""A torch-free process that commits tasks into a bank, for the crash and concurrency tests.

python bank_writer.py BANK loop            commit t0..t7 round-robin forever, printing 'committed NAME SEED'
python bank_writer.py BANK distinct P N    commit N distinct tasks named P-0..P-(N-1)
"""

from __future__ import annotations

import sys

import numpy as np

from adapterbank.bank.store import BackboneIdentity, Bank, TaskRecord

FINGERPRINT = "ab" * 32
IDENTITY = BackboneIdentity(
    "vit_tiny_patch16_224", FINGERPRINT, (3, 224, 224), (0.5,) * 3, (0.5,) * 3, "bicubic", 0.9, "random-init"
)
SHAPES = {  # not vit_tiny's real SSF shapes: this writer stays torch-free to commit within a fraction of a second
    "blocks.0.attn.qkv.ssf_scale": (1, 576),
    "blocks.0.mlp.fc1.ssf_shift": (600, 768),
    "head.weight": (10, 192),
}


def tensors_for(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def record(name: str, seed: int) -> TaskRecord:
    return TaskRecord(
        name,
        "ssf",
        {"init_std": 0.02},
        tensors_for(seed),
        [str(i) for i in range(10)],
        FINGERPRINT,
        metrics={"accuracy": seed / 1e6},
        training={"seed": seed},
    )


def main() -> None:
    bank = Bank(sys.argv[1])
    if sys.argv[2] == "loop":
        seed = int(sys.argv[3])
        while True:
            name = f"t{seed % 8}"
            bank.commit(record(name, seed), SHAPES)
            print(f"committed {name} {seed}", flush=True)
            seed += 1
    prefix, count = sys.argv[3], int(sys.argv[4])
    for i in range(count):
        bank.commit(record(f"{prefix}-{i}", hash((prefix, i)) % 100_000), SHAPES)


if __name__ == "__main__":
    main()
