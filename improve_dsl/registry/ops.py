"""Augmentation ops, architectures, layers, optimizers, schedules, losses, EMA and TTA."""

from __future__ import annotations

from .schema import Component
from .schema import param as _p

# ---------------------------------------------------------------- Augmentation

_PROB = {"minimum": 0.0, "maximum": 1.0}
AUGMENTS = (
    Component(
        "random_crop",
        "augment",
        "pad by `padding` pixels (reflect) and crop back at a random offset",
        (_p("padding", "int", 4, "pixels of padding", minimum=1, maximum=16),),
    ),
    Component(
        "translate",
        "augment",
        "shift by up to `pixels` in each direction, zero-filled",
        (_p("pixels", "int", 2, "largest shift", minimum=1, maximum=16),),
    ),
    Component(
        "horizontal_flip",
        "augment",
        "mirror left-right with probability p",
        (_p("p", "float", 0.5, "probability", **_PROB),),
    ),
    Component(
        "vertical_flip",
        "augment",
        "mirror top-bottom with probability p",
        (_p("p", "float", 0.5, "probability", **_PROB),),
    ),
    Component(
        "rotation",
        "augment",
        "rotate by a random angle in [-degrees, degrees]",
        (_p("degrees", "float", 15.0, "largest angle", minimum=0.0, maximum=180.0),),
    ),
    Component(
        "random_erasing",
        "augment",
        "erase a random rectangle (torchvision RandomErasing)",
        (
            _p("p", "float", 0.5, "probability", **_PROB),
            _p("scale_min", "float", 0.02, "smallest erased share", minimum=0.0, maximum=1.0),
            _p("scale_max", "float", 0.33, "largest erased share", minimum=0.0, maximum=1.0),
        ),
    ),
    Component(
        "cutout",
        "augment",
        "zero a random size x size square",
        (_p("size", "int", 8, "side of the square in pixels", minimum=1, maximum=256),),
    ),
    Component(
        "color_jitter",
        "augment",
        "random brightness, contrast and saturation",
        (
            _p("brightness", "float", 0.2, "strength", minimum=0.0, maximum=1.0),
            _p("contrast", "float", 0.2, "strength", minimum=0.0, maximum=1.0),
            _p(
                "saturation",
                "float",
                0.2,
                "strength (colour images only)",
                minimum=0.0,
                maximum=1.0,
            ),
        ),
    ),
    Component(
        "mixup",
        "augment",
        "blend pairs of images and their labels (Zhang et al.)",
        (_p("alpha", "float", 0.2, "Beta(alpha, alpha) mixing", minimum=0.01, maximum=10.0),),
        mixes_labels=True,
        graph_blocker="mixup draws its weight on the host: a CUDA graph would replay one draw",
    ),
    Component(
        "cutmix",
        "augment",
        "paste a patch of another image, mixing labels by area",
        (_p("alpha", "float", 1.0, "Beta(alpha, alpha) area", minimum=0.01, maximum=10.0),),
        mixes_labels=True,
        graph_blocker="cutmix draws its box on the host: a CUDA graph would replay one draw",
    ),
    Component(
        "rand_augment",
        "augment",
        "RandAugment: num_ops random ops at a fixed magnitude",
        (
            _p("num_ops", "int", 2, "ops per image", minimum=1, maximum=5),
            _p("magnitude", "int", 9, "strength out of 30", minimum=0, maximum=30),
        ),
        graph_blocker="rand_augment picks its images by a data-dependent index (a host read)",
    ),
    Component(
        "trivial_augment",
        "augment",
        "TrivialAugment: one random op at a random magnitude",
        graph_blocker="trivial_augment picks its images by a data-dependent index (a host read)",
    ),
)

# ---------------------------------------------------------------- Models

ARCHS = (
    Component(
        "mlp",
        "arch",
        "a multi-layer perceptron on the flattened image",
        (
            _p("width", "int", 256, "hidden units per layer", minimum=8, maximum=8192),
            _p("depth", "int", 2, "hidden layers", minimum=1, maximum=8),
        ),
    ),
    Component(
        "cnn",
        "arch",
        "a plain CNN: per stage, convs with batch norm and ReLU, then 2x2 "
        "max pooling; global average pooling and a linear classifier",
        (
            _p("channels", "int_list", (32, 64), "output channels of each stage"),
            _p("convs_per_stage", "int", 1, "conv layers per stage", minimum=1, maximum=4),
            _p("kernel_size", "int", 3, "conv kernel size", choices=(3, 5)),
            _p("batch_norm", "bool", True, "batch norm after each conv"),
        ),
    ),
    Component(
        "resnet",
        "arch",
        "CIFAR-style ResNet (He et al.): depth 6n+2, three stages of width, 2x width, 4x width",
        (
            _p("depth", "int", 8, "total depth", choices=(8, 14, 20, 32, 44, 56)),
            _p("width", "int", 16, "channels of the first stage", minimum=4, maximum=256),
        ),
    ),
    Component(
        "preact_resnet",
        "arch",
        "pre-activation ResNet-18/34 sized for small images",
        (
            _p("depth", "int", 18, "18 or 34", choices=(18, 34)),
            _p("width", "int", 64, "channels of the first stage", minimum=4, maximum=256),
        ),
    ),
    Component(
        "wide_resnet",
        "arch",
        "Wide ResNet (Zagoruyko & Komodakis): depth 6n+4",
        (
            _p("depth", "int", 16, "total depth", choices=(10, 16, 22, 28)),
            _p("widen", "int", 4, "width multiplier", minimum=1, maximum=12),
            _p("dropout", "float", 0.0, "dropout inside blocks", minimum=0.0, maximum=0.9),
        ),
    ),
    Component(
        "airbench",
        "arch",
        "airbench-style fast net: conv stem, three conv-pool-BN-GELU "
        "blocks of width, 4x, 4x channels",
        (_p("width", "int", 64, "channels of the first block", minimum=8, maximum=256),),
    ),
    Component(
        "torchvision",
        "arch",
        "a torchvision zoo model, first conv and classifier adapted to the data",
        (
            _p(
                "name",
                "enum",
                "resnet18",
                "the model",
                choices=(
                    "resnet18",
                    "resnet34",
                    "resnet50",
                    "mobilenet_v3_small",
                    "efficientnet_b0",
                    "convnext_tiny",
                    "regnet_y_400mf",
                ),
            ),
            _p(
                "pretrained",
                "bool",
                False,
                "start from ImageNet weights (needs them cached or a network)",
            ),
        ),
    ),
)

LAYERS = (
    Component(
        "conv",
        "layer",
        "2-d convolution (same padding)",
        (
            _p("out", "int", 32, "output channels", minimum=1, maximum=4096),
            _p("kernel", "int", 3, "kernel size", minimum=1, maximum=11),
            _p("stride", "int", 1, "stride", minimum=1, maximum=4),
        ),
    ),
    Component("batch_norm", "layer", "batch normalisation"),
    Component("relu", "layer", "ReLU", output="same"),
    Component("gelu", "layer", "GELU", output="same"),
    Component(
        "max_pool",
        "layer",
        "max pooling",
        (_p("size", "int", 2, "window and stride", minimum=2, maximum=8),),
    ),
    Component(
        "avg_pool",
        "layer",
        "average pooling",
        (_p("size", "int", 2, "window and stride", minimum=2, maximum=8),),
    ),
    Component("global_avg_pool", "layer", "average over all positions"),
    Component("flatten", "layer", "flatten to a vector", output="vector"),
    Component(
        "dropout",
        "layer",
        "dropout",
        (_p("p", "float", 0.5, "drop probability", minimum=0.0, maximum=0.95),),
        output="same",
    ),
    Component(
        "linear",
        "layer",
        "fully connected layer",
        (_p("out", "int", 128, "output units", minimum=1, maximum=65536),),
        output="vector",
    ),
)

# ---------------------------------------------------------------- Training

OPTIMIZERS = (
    Component(
        "sgd",
        "optimizer",
        "stochastic gradient descent (torch.optim.SGD)",
        (
            _p("lr", "float", 0.1, "learning rate", minimum=1e-6, maximum=10.0),
            _p("momentum", "float", 0.9, "momentum", minimum=0.0, maximum=0.999),
            _p("nesterov", "bool", True, "Nesterov momentum"),
            _p("weight_decay", "float", 5e-4, "L2 penalty", minimum=0.0, maximum=0.1),
        ),
    ),
    Component(
        "adamw",
        "optimizer",
        "Adam with decoupled weight decay (torch.optim.AdamW)",
        (
            _p("lr", "float", 1e-3, "learning rate", minimum=1e-6, maximum=1.0),
            _p("weight_decay", "float", 0.01, "decoupled weight decay", minimum=0.0, maximum=1.0),
            _p("beta1", "float", 0.9, "first-moment decay", minimum=0.0, maximum=0.999),
            _p("beta2", "float", 0.999, "second-moment decay", minimum=0.0, maximum=0.9999),
        ),
    ),
    Component(
        "adam",
        "optimizer",
        "Adam (torch.optim.Adam)",
        (
            _p("lr", "float", 1e-3, "learning rate", minimum=1e-6, maximum=1.0),
            _p("weight_decay", "float", 0.0, "L2 penalty", minimum=0.0, maximum=0.1),
        ),
    ),
    Component(
        "rmsprop",
        "optimizer",
        "RMSprop (torch.optim.RMSprop)",
        (
            _p("lr", "float", 1e-3, "learning rate", minimum=1e-6, maximum=1.0),
            _p("momentum", "float", 0.0, "momentum", minimum=0.0, maximum=0.999),
            _p("weight_decay", "float", 0.0, "L2 penalty", minimum=0.0, maximum=0.1),
        ),
    ),
)

SCHEDULES = (
    Component("constant", "schedule", "the same learning rate throughout"),
    Component(
        "one_cycle",
        "schedule",
        "one-cycle: warm up to lr, then anneal (torch OneCycleLR)",
        (_p("warmup", "float", 0.3, "share of steps spent warming up", minimum=0.0, maximum=0.9),),
    ),
    Component(
        "cosine",
        "schedule",
        "linear warm-up, then cosine decay to min_lr_ratio x lr",
        (
            _p("warmup", "float", 0.0, "share of steps spent warming up", minimum=0.0, maximum=0.9),
            _p("min_lr_ratio", "float", 0.0, "final lr as a share of lr", minimum=0.0, maximum=1.0),
        ),
    ),
    Component(
        "linear",
        "schedule",
        "linear warm-up, then linear decay to zero (airbench)",
        (_p("warmup", "float", 0.1, "share of steps spent warming up", minimum=0.0, maximum=0.9),),
    ),
    Component(
        "step",
        "schedule",
        "multiply lr by gamma every `every` epochs (StepLR)",
        (
            _p("every", "int", 10, "epochs between drops", minimum=1, maximum=1000),
            _p("gamma", "float", 0.1, "factor", minimum=0.0, maximum=1.0),
        ),
    ),
)

LOSSES = (
    Component(
        "cross_entropy",
        "loss",
        "cross-entropy with optional label smoothing",
        (_p("label_smoothing", "float", 0.0, "label smoothing", minimum=0.0, maximum=0.5),),
    ),
)

EMAS = (
    Component(
        "ema",
        "ema",
        "evaluate an exponential moving average of the weights",
        (_p("decay", "float", 0.999, "decay per step", minimum=0.5, maximum=0.99999),),
    ),
)

TTAS = (
    Component("horizontal_flip", "tta", "average predictions over the image and its mirror"),
    Component("vertical_flip", "tta", "average over the image and its top-bottom mirror"),
    Component(
        "translate",
        "tta",
        "average over the image shifted by +/- pixels",
        (_p("pixels", "int", 1, "shift", minimum=1, maximum=8),),
    ),
)
