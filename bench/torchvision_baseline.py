"""Fashion-MNIST, trained the usual torchvision way: the baseline for bench/throughput.py.

An idiomatic hand-written script: a map-style Dataset that hands out PIL images (as
torchvision.datasets.FashionMNIST does), per-image PIL transforms (RandomCrop with padding,
RandomHorizontalFlip, ToTensor, Normalize) and a DataLoader with two worker processes. The
network and the recipe are written out by hand to match specs/fashion_mnist.imp's compiled
script (nothing is imported from it):

- ResNet-8, width 32 (CIFAR-style: 3x3 stem, one basic block per stage, widths 32/64/128,
  1x1 projection shortcuts, PyTorch's default init, or Kaiming fan-out with --init kaiming),
  global average pooling, linear classifier;
- 2-pixel reflect-padded random crop and horizontal flip;
- SGD lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4 on weights only (not biases or norm
  scales), one-cycle schedule (20% cosine warm-up from lr/25, cosine decay to lr/25e4,
  momentum not cycled), cross-entropy with label smoothing 0.1, batch 256 (whole batches only);
- a stratified 10% of the training files held out (unused), a stratified subset of the rest
  with --subset (the same images whatever --seed, which seeds the weights and the order),
  normalisation from training pixels, flip test-time augmentation;
- --precision auto: bf16 autocast on CUDA, fp32 on the CPU; bf16: bf16 autocast on both;
  fp32: no autocast anywhere; --compile: torch.compile the model (as `compile = true`).

It prints one JSON line: {"images_per_second", "seconds", "test_accuracy", ...}. "seconds" is
the time of the training loop over all epochs (batches fetched, augmented and trained on), not
the reading of the IDX files nor evaluation; the compiled script reports the same window.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

DATA = Path("/usr/share/datasets/fashion-mnist")
BATCH_SIZE = 256
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4
WARMUP = 0.2
LABEL_SMOOTHING = 0.1
VALIDATION_FRACTION = 0.1


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped) as a uint8 array, as torchvision's read_sn3_pascalvincent_file."""
    data = gzip.decompress(path.read_bytes())
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


class FashionMNIST(Dataset[tuple[Tensor, int]]):
    """Images as PIL "L" images, one per __getitem__, like torchvision.datasets.FashionMNIST."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: transforms.Compose):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = Image.fromarray(self.images[index], mode="L")
        return self.transform(image), int(self.labels[index])


def stratified(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of `count` items, each class keeping its share."""
    picked = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = round(count * len(members) / len(labels))
        picked.append(rng.permutation(members)[:take])
    return np.sort(np.concatenate(picked))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet8(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 32, kaiming: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)
        )
        self.blocks = nn.Sequential(
            BasicBlock(width, width, 1),
            BasicBlock(width, 2 * width, 2),
            BasicBlock(2 * width, 4 * width, 2),
        )
        self.classifier = nn.Linear(4 * width, num_classes)
        for module in self.modules():  # by default PyTorch's own initialisation, as most scripts
            if kaiming and isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1)
        logits: Tensor = self.classifier(torch.flatten(x, 1))
        return logits


def build_data(
    root: Path,
    subset: int | None,
    workers: int,
    *,
    pin_memory: bool = False,
    train_index: np.ndarray | None = None,
) -> tuple[FashionMNIST, FashionMNIST, DataLoader[tuple[Tensor, int]]]:
    """The training set (a seeded stratified 10% held out, then --subset; or the images
    `train_index` names), the test set and the training DataLoader."""
    images = read_idx(root / "train-images-idx3-ubyte.gz")
    labels = read_idx(root / "train-labels-idx1-ubyte.gz").astype(np.int64)
    test_images = read_idx(root / "t10k-images-idx3-ubyte.gz")
    test_labels = read_idx(root / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    if train_index is None:
        rng = np.random.default_rng(0)  # the same images whatever the seed
        held_out = stratified(labels, round(VALIDATION_FRACTION * len(labels)), rng)
        train_index = np.setdiff1d(np.arange(len(labels)), held_out)
        if subset and subset < len(train_index):
            train_index = train_index[stratified(labels[train_index], subset, rng)]
    train_images, train_labels = images[train_index], labels[train_index]
    pixels = train_images.astype(np.float32) / 255
    mean, std = float(pixels.mean()), float(pixels.std())

    normalize = transforms.Normalize((mean,), (std,))
    train_set = FashionMNIST(
        train_images,
        train_labels,
        transforms.Compose(
            [
                transforms.RandomCrop(28, padding=2, padding_mode="reflect"),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                normalize,
            ]
        ),
    )
    test_set = FashionMNIST(
        test_images, test_labels, transforms.Compose([transforms.ToTensor(), normalize])
    )
    loader = DataLoader(
        train_set,
        batch_size=BATCH_SIZE,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
    )
    return train_set, test_set, loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", type=int, help="training images (stratified)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=32, help="ResNet-8 width (the spec's: 32)")
    parser.add_argument("--init", choices=("default", "kaiming"), default="default")
    parser.add_argument("--data-root", type=Path, default=DATA)
    parser.add_argument(
        "--train-index",
        type=Path,
        help="a .npy of indices into the training file: train on exactly these images "
        "(bench/throughput.py passes the compiled script's, so both see the same images)",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="as the spec's: auto is bf16 autocast on CUDA and fp32 on the CPU; bf16 is bf16 "
        "autocast on both; fp32 never autocasts",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = parser.parse_args()
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    cuda = device.type == "cuda"
    torch.manual_seed(args.seed)

    train_set, test_set, loader = build_data(
        args.data_root,
        args.subset,
        args.workers,
        pin_memory=cuda,
        train_index=np.load(args.train_index) if args.train_index else None,
    )

    memory_format = torch.channels_last if cuda else torch.contiguous_format
    model = (
        ResNet8(width=args.width, kaiming=args.init == "kaiming")
        .to(device)
        .to(memory_format=memory_format)
    )
    params = list(model.parameters())
    optimizer = torch.optim.SGD(
        [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": WEIGHT_DECAY},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ],
        lr=LR,
        momentum=MOMENTUM,
        nesterov=True,
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=LR,
        total_steps=args.epochs * len(loader),
        pct_start=WARMUP,
        cycle_momentum=False,
        div_factor=25,
        final_div_factor=1e4,
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
    forward = torch.compile(model) if args.compile else model
    bf16 = args.precision == "bf16" or (cuda and args.precision == "auto")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    seen = 0
    started = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        for inputs, targets in loader:
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with autocast:
                loss = criterion(forward(inputs).float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(targets)
        if not math.isfinite(loss.item()):  # .item() also waits for the device
            raise SystemExit("the training loss became NaN")
    seconds = time.perf_counter() - started

    model.eval()
    correct = 0
    with torch.no_grad(), autocast:
        for inputs, targets in DataLoader(test_set, batch_size=512, num_workers=args.workers):
            inputs, targets = inputs.to(device), targets.to(device)
            logits = (forward(inputs).float() + forward(inputs.flip(3)).float()) / 2  # flip TTA
            correct += int((logits.argmax(1) == targets).sum())
    print(
        json.dumps(
            {
                "images_per_second": seen / seconds,
                "seconds": seconds,
                "test_accuracy": correct / len(test_set),
                "train_size": len(train_set),
                "epochs": args.epochs,
                "device": str(device),
                "precision": "bf16" if bf16 else "fp32",
            }
        )
    )


if __name__ == "__main__":
    main()
