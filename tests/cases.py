"""Bad config values and what the refusal must say: shared by the validator's unit test
(tests/unit/test_config.py) and the command-line refusal table
(tests/integration/test_refusals.py)."""

BAD = [
    # (overrides, text that must appear in the message: the key, and what is allowed)
    (["optimizer.lr=-0.1"], ["optimizer.lr = -0.1", "must be > 0"]),
    (["optimizer.lr=0"], ["optimizer.lr = 0", "must be > 0"]),
    # a divergence threshold at or below the initial loss: every run would diverge at once
    (
        ["callbacks.stability.max_loss_ratio=1"],
        ["callbacks.stability.max_loss_ratio = 1", "must be > 1"],
    ),
    (["data.batch_size=0"], ["data.batch_size = 0", "must be > 0"]),
    # eps = 0: a gradient component that is exactly 0 gives 0 / 0 (the MLP: NaN at step 1)
    (["optimizer.eps=0"], ["optimizer.eps = 0", "must be > 0"]),
    # pure float16 with Adam's eps: the first update divides by (almost) zero
    (
        ["trainer.precision=16-true"],
        ["trainer.precision = '16-true' with optimizer.eps = 1e-08", "16-mixed or bf16-mixed"],
    ),
    (["data.batch_size=12.5"], ["data.batch_size = 12.5", "expected an integer"]),
    (
        ["model.residual.layout=postnorm"],
        [
            "model.residual.layout = 'postnorm'",
            "'post_norm', 'branch_norm', 'pre_norm', 'none'",
            "did you mean 'post_norm'",
        ],
    ),
    (
        ["model.residual.branch_init=zeros"],
        ["model.residual.branch_init", "'default', 'zero', 'rezero'"],
    ),
    (
        ["model.norm=groupnorm"],
        ["model.norm = 'groupnorm'", "'layernorm', 'batchnorm', 'rmsnorm', 'none'"],
    ),
    (["+model.widht=3"], ["model.widht: unknown key", "did you mean 'widths'", "allowed keys:"]),
    (["+foo=1"], ["foo: unknown key for the root config", "max_train_steps"]),
    (["seed=-1"], ["seed = -1", "must be >= 0"]),
    (["threads=0"], ["threads = 0", "must be > 0"]),
    (
        ["optimized_metric=test_acc"],
        ["optimized_metric = 'test_acc'", "'val_loss', 'val_acc', 'val_bpc', 'final_train_loss'"],
    ),
    # schedule.max_train_steps interpolates the root key: both are reported
    (["max_train_steps=0"], ["max_train_steps = 0", "schedule.max_train_steps = 0", "must be > 0"]),
    (["data.val_fraction=1.0"], ["data.val_fraction = 1.0", "must be < 1"]),
    (["data.val_fraction=abc"], ["data.val_fraction = 'abc'", "expected a number"]),
    (["optimizer=momentum", "optimizer.momentum=1.0"], ["optimizer.momentum = 1.0", "must be < 1"]),
    (["optimizer.beta2=-0.5"], ["optimizer.beta2 = -0.5", "must be >= 0"]),
    (
        ["clipping=fixed", "clipping.clip_threshold=0"],
        ["clipping.clip_threshold = 0", "must be > 0"],
    ),
    (
        ["schedule=cosine", "schedule.final_lr_fraction=2"],
        ["schedule.final_lr_fraction = 2", "must be <= 1"],
    ),
    (["schedule.warmup_steps=-5"], ["schedule.warmup_steps = -5", "must be >= 0"]),
    (
        ["schedule.warmup_steps=2000", "max_train_steps=1000"],
        ["schedule.warmup_steps + post_warmup_steps = 2000", "must be <= the run's 1000 steps"],
    ),
    (["model.widths=[32,64]"], ["model.widths/depths/strides", "got 2, 3, 3"]),
    (
        ["model=transformer", "model.num_heads=3"],
        ["model.d_model = 64", "divisible by num_heads = 3"],
    ),
    (["data=sequence", "data.num_pairs=20"], ["data.num_pairs = 20", "must be <= num_keys = 16"]),
    (
        ["+trainer.max_steps=5"],
        ["trainer.max_steps: set by stablelab at run time", "the top-level max_train_steps=N"],
    ),
    (
        ["optimizer._target_=null"],
        ["optimizer: missing _target_", "adam, momentum, nadam, nesterov, rmsprop, sgd"],
    ),
    (
        ["optimizer._target_=stablelab.optim.Adamm"],
        ["optimizer._target_ = 'stablelab.optim.Adamm'", "cannot be imported"],
    ),
    (["+logger.wandb.projet=x"], ["logger.wandb.projet: unknown key", "did you mean 'project'"]),
    (["logger.wandb.project=5"], ["logger.wandb.project = 5", "expected a string"]),
    (
        ["+callbacks.model_checkpoint.monitr=x"],
        ["callbacks.model_checkpoint.monitr: unknown key", "'monitor'"],
    ),
    (["model.pool=max"], ["model.pool = 'max'", "'avg', 'flatten'"]),
    (
        ["+trainer.strategy=fsdp"],
        ["trainer.strategy = 'fsdp'", "FSDP1 is not supported", "trainer=fsdp"],
    ),
    (["trainer=fsdp_cpu", "compile=true"], ["compile = true", "FSDP2Strategy", "compile=false"]),
    (
        ["+trainer.strategy._target_=lightning.pytorch.strategies.ModelParallelStrategy"],
        ["trainer.strategy.tensor_parallel_size = 'auto'", "allowed: 1"],
    ),
]
