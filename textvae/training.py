"""fit(recipe) → run directory: the training loop, checkpoints, final evaluation.

No Trainer class: ``fit`` plus small helpers. The loop follows He et al. (2019):
SGD (or Adam) with gradient clipping, validation each epoch, the best model kept
by validation loss (−ELBO), and the learning rate halved — reloading the best
model — after ``lr_decay_patience_epochs`` epochs without improvement, at most
``max_lr_decays`` times.

Faults: every input is checked before the run directory is touched; a step with a
non-finite loss or gradient is skipped and counted (``train.max_bad_steps`` stops the
run); Ctrl-C writes a checkpoint and stops; ``train.checkpoint_every_steps`` adds
mid-epoch checkpoints, and a resume from any checkpoint continues the run exactly
(weights and metrics). One summary line per epoch goes to the ``textvae`` logger.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import random
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .builders import build_datasets, build_model, resolve_device
from .checkpoint import (
    DIVERGED_FILE,
    MODEL_DIR,
    atomic_write_text,
    check_output_dir,
    claim_run_dir,
    latest_checkpoint,
    load_model_dir,
    resume_point,
    save_checkpoint,
    save_config,
    save_model_dir,
)
from .config import Config, TrainConfig
from .data import TextDataset
from .distributed import (
    World,
    agree,
    all_sum,
    average_gradients,
    barrier,
    broadcast,
    global_noise,
    launched,
    loss_scale,
    rank_stream,
    setup,
    shard,
    shard_rows,
    wrap,
)
from .errors import TrainingDiverged, TrainingInterrupted
from .evaluation import PER_SEQUENCE_FILE, EvalResult, evaluate
from .gradients import (
    AUTO_MIN_ELEMENTS,
    clip_gradients,
    has_sparse_embeddings,
    set_sparse_embeddings,
    use_sparse_embeddings,
)
from .loggers import Loggers, check_loggers
from .modules.critics import build_critic
from .objectives import critic_term, critic_weight, kl_weight, negative_elbo
from .precision import autocast, grad_scaler, resolve_precision
from .strategies import Strategies, frozen_parameters
from .tracking import plot_training_curves

log = logging.getLogger("textvae")
SUM_KEYS = ("loss", "rec", "kl", "critic_loss", "critic_acc", "critic_mi_bound", "n", "steps")


def critic_own_parameters(critic: torch.nn.Module | None, model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The critic's parameters minus those it shares with the model (the hybrid's embedding)."""
    if critic is None:
        return []
    shared = {id(p) for p in model.parameters()}
    return [p for p in critic.parameters() if id(p) not in shared]


def make_optimizers(model: torch.nn.Module, critic: torch.nn.Module | None, cfg: Config, lr: float):
    """The model's optimiser (with the critic as a second parameter group), or a separate Adam for the critic.

    Returns (optimizer, critic_optimizer or None).
    """
    groups = [{"params": list(model.parameters()), "lr": lr}]
    own = critic_own_parameters(critic, model)
    critic_optimizer = None
    if own and cfg.critic.optimizer == "adam":
        # fused: one kernel for all of the critic's small tensors (6% of a synthetic step on a CPU)
        critic_optimizer = torch.optim.Adam(own, lr=cfg.critic.lr or 1e-3, fused=True)
    elif own:
        groups.append({"params": own, "lr": cfg.critic.lr or lr})
    tc = cfg.train
    # fused: one kernel per step for all of a CPU model's tensors (a fp16 GradScaler, CUDA only, keeps the default);
    # sparse embedding gradients (textvae.gradients) take the multi-tensor kernels instead, which accept them
    sparse = has_sparse_embeddings([model, critic])
    fused = not sparse and all(p.device.type == "cpu" for group in groups for p in group["params"])
    kernels = {"fused": True} if fused else {"foreach": True} if sparse else {}
    if tc.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(tc.adam_betas), **kernels), critic_optimizer
    return torch.optim.SGD(groups, lr=lr, momentum=tc.momentum, **kernels), critic_optimizer


def prepare_training(model: torch.nn.Module, critic: torch.nn.Module | None, cfg: Config, lr: float,
                     distributed: bool = False, precision: str = "fp32"):
    """What ``fit`` (and a benchmark) trains with: the embeddings given the run's kind of gradient
    (``train.embedding_gradients``, :mod:`textvae.gradients`; a critic with its own Adam keeps dense ones),
    then :func:`make_optimizers`. ``precision``: the resolved one. Returns (optimizer, critic_optimizer or None)."""
    sparse = use_sparse_embeddings(cfg.train, distributed, precision)
    smallest = 0 if cfg.train.embedding_gradients == "sparse" else AUTO_MIN_ELEMENTS  # auto: large tables only
    set_sparse_embeddings([model, critic if cfg.critic.optimizer == "same" else None], sparse, smallest)
    return make_optimizers(model, critic, cfg, lr)


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """``optimizer.load_state_dict(saved)``, keeping the kernels (fused / foreach) it was built with: a checkpoint
    from a run with dense embedding gradients resumes with sparse ones, and the other way round."""
    kernels = [{k: group.get(k) for k in ("fused", "foreach")} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, kept in zip(optimizer.param_groups, kernels, strict=True):
        group.update(kept)


def _rng_state() -> dict:
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss_next]}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _lr_schedule(state: dict, val_loss: float, cfg: TrainConfig) -> bool:
    """He et al.'s plateau rule; returns True when the lr must be decayed now."""
    if val_loss > state["plateau_best"]:
        state["bad_epochs"] += 1
        run_epoch = state["epoch"] - state["schedule_start_epoch"]  # epochs since the run (or its restart) began
        if state["bad_epochs"] >= cfg.lr_decay_patience_epochs and run_epoch >= cfg.lr_decay_min_epoch:
            state.update(plateau_best=val_loss, bad_epochs=0, lr=state["lr"] * cfg.lr_decay_factor)
            state["n_decays"] += 1
            return True
    else:
        state.update(bad_epochs=0, plateau_best=val_loss)
    return False


def train_step(model, critic, batch, cfg: Config, kl_w: float, critic_w: float, optimizer, critic_optimizer,
               critic_params, update: str = "all", precision: str = "fp32", world: World | None = None,
               step: int = 0, scaler: torch.amp.GradScaler | None = None, refine=None) -> dict[str, float]:
    """One update on ``rec + kl_w · KL (+ critic_w · InfoNCE)``; returns the batch's sums for logging.

    Sums (not means) of loss, rec, kl, critic_loss, critic_acc, critic_mi_bound over the
    batch's sequences, and n. The KL term follows ``train.free_bits`` (the logged ``kl`` is
    the true KL). The critic's own parameters are clipped separately and, with
    ``critic.optimizer=adam``, stepped by their own optimiser. ``update`` = ``encoder``
    or ``decoder`` moves only that side (aggressive training, :mod:`textvae.strategies`):
    the whole model's gradient is clipped first, as He et al. do, then the other side's
    is dropped. A ``decoder`` step only logs the critic term.

    A non-finite loss or gradient norm moves nothing: the step is skipped and the sums are
    ``{"bad_steps": 1}``. ``train.grad_clip = 0`` computes the norm without clipping. ``precision``
    (``fp32``, ``bf16`` or ``fp16``, :mod:`textvae.precision`) is the autocast of the forward pass; fp16
    brings its ``scaler``, whose overflowing steps are skipped (``{"overflow_steps": 1}``), not counted bad.

    Under ``torchrun`` (``world``; ``model`` wrapped in DDP) ``batch`` is the global batch: this rank
    trains on its rows (:mod:`textvae.distributed`), with its rows of the global batch's noise, and
    the returned sums are those of the global batch. ``step`` seeds the rank's own random stream.
    ``refine`` is a strategy's posterior refinement (SA-VAE), passed to the model's forward pass.
    """
    world = world or World()
    core = getattr(model, "module", model)  # the TextVAE inside a DDP wrapper
    global_rows = batch.input_ids.size(0)
    noise = None
    if world.distributed and core.latent_dim:
        rows = shard_rows(global_rows, world)
        noise = global_noise(global_rows, core.latent_dim, rows, next(core.parameters()).float())
    batch = shard(batch, world)
    with rank_stream(world, cfg.seed, step):
        with autocast(precision, batch.input_ids.device):
            out = model(batch.input_ids, batch.attention_mask, batch.encoder_input_ids,
                        batch.encoder_attention_mask, noise=noise, refine=refine)
        loss = negative_elbo(out, kl_w, cfg.train.free_bits, cfg.train.free_bits_mode)
        b = batch.input_ids.size(0)
        sums = {"rec": float(out.rec.detach().sum()), "kl": float(out.kl.detach().sum()), "n": b}
        if critic is not None:  # the critic reads x as the encoder does (it may share the encoder's embedding)
            # A decoder-only step cannot use the critic term (it never reaches the decoder): it is only logged,
            # so the step, and its gradient clipping, is He et al.'s decoder step on the ELBO alone.
            with torch.set_grad_enabled(update != "decoder"), autocast(precision, batch.input_ids.device):
                c_loss, c_acc, c_bound = critic_term(critic, out, batch.encoder_input_ids,
                                                     batch.encoder_attention_mask, cfg.critic, world, global_rows)
            if update != "decoder":
                loss = loss + critic_w * c_loss
            sums.update(critic_loss=float(c_loss.detach()) * b, critic_acc=float(c_acc) * b,
                        critic_mi_bound=float(c_bound) * b)
    sums["loss"] = float(loss.detach()) * b
    sums = all_sum(sums, world, batch.input_ids.device)  # the global batch's sums: every rank decides alike
    optimizer.zero_grad(set_to_none=True)
    if critic_optimizer is not None:
        critic_optimizer.zero_grad(set_to_none=True)
    if not math.isfinite(sums["loss"]):
        return {"bad_steps": 1}
    if world.distributed:
        loss = loss * loss_scale(b, global_rows, world)
    optimizers = [o for o in (optimizer, critic_optimizer) if o is not None]
    (loss if scaler is None else scaler.scale(loss)).backward()  # under DDP: gradients averaged over ranks here
    average_gradients(critic_params, world)
    for opt in optimizers if scaler is not None else ():
        scaler.unscale_(opt)  # clipping sees the true gradients
    clip = cfg.train.grad_clip or math.inf
    norm = clip_gradients(list(core.parameters()), clip)
    critic_norm = clip_gradients(critic_params, clip) if critic_params else norm
    if not (torch.isfinite(norm) and torch.isfinite(critic_norm)):
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        if scaler is not None:  # fp16 overflowed: the scaler lowers its scale and the step is skipped
            scaler.update()
            return {"overflow_steps": 1}
        return {"bad_steps": 1}
    for param in frozen_parameters(core, critic_params, update):
        param.grad = None  # SGD and Adam skip a parameter without a gradient
    stepped = [optimizer] + ([critic_optimizer] if critic_optimizer is not None and update != "decoder" else [])
    for opt in stepped:
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
    if scaler is not None:
        scaler.update()
    return sums


@contextmanager
def stop_on_sigint():
    """While training: the first Ctrl-C (SIGINT) sets the returned event, so the loop can checkpoint and stop
    cleanly; a second one interrupts at once. Outside the main thread signals cannot be caught: a no-op."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if event.is_set():
            raise KeyboardInterrupt
        event.set()

    signal.signal(signal.SIGINT, handler)
    try:
        yield event
    finally:
        signal.signal(signal.SIGINT, previous)


def record_data_files(cfg: Config, datasets: dict) -> Config:
    """The config a run stores: ``data.dir`` absolute and the sha256 of every split file it read, so that the
    run directory is self-contained (``textvae eval`` from any folder checks it is the same data)."""
    data = cfg.data
    prints = dict(data.fingerprints)
    for dataset in datasets.values():
        prints[dataset.source.path.name] = dataset.source.sha256
    folder = None if data.dir is None else str(Path(data.dir).resolve())
    return replace(cfg, data=replace(data, dir=folder, fingerprints=prints))


def _epoch_line(record: dict, max_epochs: int) -> str:
    """The one-line summary of an epoch's validation record (the ``textvae`` logger, INFO)."""
    def fmt(name: str, spec: str) -> str:
        value = record.get(name)
        return f"{name} {'n/a' if value is None else format(value, spec)}"

    return (f"epoch {record['epoch']}/{max_epochs}  step {record['step']}  valid {fmt('loss', '.3f')}  "
            f"{fmt('rec', '.3f')}  {fmt('kl', '.3f')}  {fmt('mi', '.3f')}  {fmt('au', 'd')}  {fmt('ppl', '.2f')}  "
            f"lr {record['lr']:g}  {record['seconds']:.1f} s")


def fit(
    cfg: Config, output_dir: str | Path, resume: bool = False, overwrite: bool = False, progress: bool = True
) -> Path:
    """Train ``cfg`` into ``output_dir`` and evaluate the best model on the test split.

    Writes config.yaml, metrics.jsonl, model/, checkpoints/, eval_test.json and curves.png. Nothing
    is written (an existing run with ``overwrite`` is left in place) until the data, the tokenizer
    and the model have been built from ``cfg`` without error.
    """
    run = Path(output_dir)
    check_output_dir(run, resume=resume, overwrite=overwrite)
    strategies = Strategies(cfg.train)  # aggressive training, AE pretraining: textvae.strategies
    strategies.check(distributed=launched())
    world, device = setup(resolve_device(cfg.device))
    precision = resolve_precision(cfg.train.precision, device)  # fp16 off CUDA is refused before anything is written
    use_sparse_embeddings(cfg.train, world.distributed, precision)  # so are unusable sparse gradients
    check_loggers(cfg.train.loggers)  # so is a logger whose package is missing
    torch.manual_seed(cfg.seed)  # the same on every rank: the shared stream of the reparameterisation noise
    random.seed(cfg.seed)
    ckpt = None
    if resume:  # rank 0 first: it alone may set a damaged checkpoint aside
        if world.main:
            ckpt, model, tokenizer, state = resume_point(run, device)
        barrier(world)
        if not world.main:
            ckpt, model, tokenizer, state = resume_point(run, device)
    datasets, tokenizer = build_datasets(cfg, tokenizer if ckpt else None)
    if not ckpt:
        model = build_model(cfg, tokenizer).to(device)
        state = dict(step=0, epoch=0, batch_in_epoch=0, best_val=math.inf, plateau_best=math.inf,
                     bad_epochs=0, n_decays=0, lr=cfg.train.lr)
    state = {"bad_steps": 0, "train_seconds": 0.0, **strategies.initial_state(), **state}  # older checkpoints too
    state.setdefault("schedule_start_step", state.get("stage_start_step", 0))  # where the lr and KL schedules
    state.setdefault("schedule_start_epoch", state.get("stage_start_epoch", 0))  # last (re)started
    critic = build_critic(cfg.critic, model)
    optimizer, critic_optimizer = prepare_training(model, critic, cfg, state["lr"], world.distributed, precision)
    if ckpt:
        load_optimizer_state(optimizer, state["optimizer"])
        if critic is not None:
            critic.load_state_dict(state["critic"])
        if critic_optimizer is not None:
            critic_optimizer.load_state_dict(state["critic_optimizer"])
        _set_rng_state(state["rng"])
    cfg = record_data_files(cfg, datasets)
    if world.main:
        if not resume:
            claim_run_dir(run)  # every input has passed its checks: only now is an old run replaced
        save_config(run, cfg)  # on --resume too: the config this continuation runs with
    barrier(world)
    log.info(f"training {cfg.name} (method {cfg.method}) into {run}: {len(datasets['train'])} training "
             f"sequences, vocabulary {tokenizer.vocab_size}, {sum(p.numel() for p in model.parameters()):,} "
             f"parameters, {device}, {precision}"
             + (", sparse embedding gradients" if has_sparse_embeddings([model, critic]) else "")
             + (f", resumed from {ckpt.name}" if ckpt else "")
             + (f", {world.size} data-parallel ranks" if world.distributed else ""))
    default_threads = torch.get_num_threads()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)  # the training loop only; evaluation uses every core
    torch.set_flush_denormal(cfg.train.flush_denormal)  # the training loop only, as the threads
    try:
        with stop_on_sigint() as interrupted:
            _train(run, cfg, model, tokenizer, critic, optimizer, critic_optimizer, datasets, state, device,
                   progress and world.main, interrupted, world, strategies)
    finally:
        torch.set_num_threads(default_threads)
        torch.set_flush_denormal(False)  # torch's default
    final_evaluation(run, cfg, datasets["test"], device, progress and world.main, world)  # sharded over ranks
    if world.main:
        plot_training_curves(run / "metrics.jsonl", run / "curves.png")
    barrier(world)
    return run


def _train(run: Path, cfg: Config, model, tokenizer, critic, optimizer, critic_optimizer, datasets, state: dict,
           device, progress: bool, interrupted: threading.Event, world: World | None = None,
           strategies: Strategies | None = None) -> None:
    """The epoch loop of :func:`fit`, from ``state`` (fresh or a checkpoint's) to the end of training.

    Under torchrun every rank runs this loop on the same global batches; rank 0 alone writes, and the
    decisions that depend on a clock or a signal (budget, Ctrl-C) are agreed on by all ranks each step.
    """
    world = world or World()
    strategies = strategies or Strategies(cfg.train)
    critic_params = critic_own_parameters(critic, model)
    trained = wrap(model, world, device)  # the module the steps run (DDP under torchrun)
    metrics = Loggers(cfg.train.loggers, run, state["step"], enabled=world.main)  # train.loggers: metrics.jsonl, ...
    metrics.truncate_after(state["step"])
    try:
        _epochs(run, cfg, model, tokenizer, critic, optimizer, critic_optimizer, datasets, state, device, progress,
                interrupted, world, critic_params, trained, metrics, strategies)
    finally:
        metrics.close()


def _epochs(run: Path, cfg: Config, model, tokenizer, critic, optimizer, critic_optimizer, datasets, state: dict,
            device, progress: bool, interrupted: threading.Event, world: World, critic_params, trained,
            metrics: Loggers, strategies: Strategies) -> None:
    """The body of :func:`_train`: epochs until the budget, the lr rule or early stopping ends the run."""
    train_set, valid_set = datasets["train"], datasets["valid"]
    tc = cfg.train
    steps_per_epoch = math.ceil(len(train_set) / tc.batch_size)
    precision = resolve_precision(tc.precision, device)
    scaler = grad_scaler(precision, device)
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    max_steps = tc.max_steps or math.inf
    max_seconds = 60 * tc.max_train_minutes if tc.max_train_minutes else math.inf  # a CPU-time budget

    def budget_spent(running_seconds: float = 0.0) -> bool:
        return state["step"] >= max_steps or state["train_seconds"] + running_seconds >= max_seconds

    def checkpoint() -> Path | None:
        if not world.main:
            return None
        state["optimizer"] = loop.optimizer.state_dict()
        if critic is not None:
            state["critic"] = critic.state_dict()
        if critic_optimizer is not None:
            state["critic_optimizer"] = critic_optimizer.state_dict()
        state["rng"] = _rng_state()
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        return save_checkpoint(run, model, tokenizer, state, tc.keep_checkpoints)

    def counted(step):
        """``step`` with its skipped (non-finite) updates counted, logged and bounded by max_bad_steps."""
        def run_step(batch, update="all"):
            sums = step(batch, update=update)
            if sums.get("bad_steps"):
                state["bad_steps"] += 1
                metrics.write({"split": "event", "step": state["step"] + 1, "epoch": state["epoch"] + 1,
                               "event": "bad_step", "update": update, "bad_steps": state["bad_steps"]})
                if state["bad_steps"] >= tc.max_bad_steps:
                    last = latest_checkpoint(run)
                    if world.main:  # what a study reports of the run, instead of its figures
                        record = {"step": state["step"] + 1, "epoch": state["epoch"] + 1,
                                  "bad_steps": state["bad_steps"], "last_checkpoint": last.name if last else None}
                        atomic_write_text(run / DIVERGED_FILE, json.dumps(record, indent=2) + "\n")
                    raise TrainingDiverged(f"training stopped: {state['bad_steps']} steps with a non-finite loss or "
                                           f"gradient (train.max_bad_steps = {tc.max_bad_steps}); the last good "
                                           f"checkpoint is {last if last else 'not written yet'}")
            return sums
        return run_step

    loop = _Loop(run, cfg, model, critic, state, device, metrics, optimizer)
    def snapshot_due(running_seconds: float) -> None:
        """train.snapshot_minutes: the best model so far (the current one before any validation), once each."""
        taken = state.setdefault("snapshots", [])
        spent = state["train_seconds"] + running_seconds
        for minutes in tc.snapshot_minutes:
            if minutes in taken or spent < 60 * minutes:
                continue
            if world.main:
                best = run / MODEL_DIR
                target = run / "snapshots" / f"minutes-{minutes:g}"
                target.parent.mkdir(exist_ok=True)
                if best.is_dir():
                    save_model_dir(*load_model_dir(best), target)
                else:
                    save_model_dir(model, tokenizer, target)
            taken.append(minutes)
            loop.event({"epoch": state["epoch"] + 1, "event": "snapshot", "minutes": minutes, "train_seconds": spent})

    stop = budget_spent() or state["n_decays"] >= tc.max_lr_decays
    while not stop and state["epoch"] < tc.max_epochs:
        batches = train_set.batches(tc.batch_size, shuffle=True, seed=cfg.seed * 100_003 + state["epoch"])
        loop.batches = batches
        model.train()
        if critic is not None:
            critic.train()
        # A resume from a mid-epoch checkpoint carries the epoch's running sums and time on.
        carried = state.pop("epoch_progress", None) or dict(
            sums=dict.fromkeys(SUM_KEYS + strategies.sum_keys, 0.0), tokens=0, seconds=0.0,
            first_batch=state["batch_in_epoch"])
        sums, tokens, first_batch = carried["sums"], carried["tokens"], carried["first_batch"]
        t0 = time.perf_counter() - carried["seconds"]
        part_start = time.perf_counter()  # this process's share of the epoch, for the time budget

        bar = tqdm(batches[state["batch_in_epoch"]:], desc=f"epoch {state['epoch'] + 1}", leave=False,
                   disable=None if progress else True)
        for batch in bar:
            batch = batch.to(device)
            weight = strategies.kl_weight(state, kl_weight(state["step"], steps_per_epoch, tc,
                                                           state["schedule_start_step"]))
            loop.step = counted(functools.partial(
                train_step, trained, critic, cfg=cfg, kl_w=weight, critic_w=critic_weight(state["step"], cfg.critic),
                optimizer=loop.optimizer, critic_optimizer=critic_optimizer, critic_params=critic_params,
                precision=precision, world=world, step=state["step"], scaler=scaler,
                refine=strategies.refinement(state, weight)))
            for key, value in strategies.before_step(loop, batch).items():  # e.g. aggressive encoder updates
                sums[key] += value
            batch_sums = loop.step(batch, update=strategies.update(state))
            if not batch_sums.get("bad_steps") and not batch_sums.get("overflow_steps"):
                for key, value in batch_sums.items():
                    sums[key] += value
                tokens += batch.num_predicted_tokens
            sums["steps"] += 1
            state["step"] += 1
            state["batch_in_epoch"] += 1
            if state["step"] % tc.log_every_steps == 0:
                n = max(sums["n"], 1)
                record = {"split": "train", "step": state["step"], "epoch": state["epoch"] + 1,
                          "loss": sums["loss"] / n, "rec": sums["rec"] / n, "kl": sums["kl"] / n,
                          "kl_weight": weight, "lr": state["lr"], "bad_steps": state["bad_steps"],
                          "tokens_per_s": tokens / (time.perf_counter() - t0)}
                if critic is not None:
                    record.update({k: sums[k] / n for k in ("critic_loss", "critic_acc", "critic_mi_bound")})
                    record["critic_weight"] = critic_weight(state["step"], cfg.critic)
                record.update(strategies.fields(state, sums))
                metrics.write(record)
                bar.set_postfix(loss=f"{sums['loss'] / n:.2f}", kl=f"{sums['kl'] / n:.2f}")
            mid_epoch = state["batch_in_epoch"] < len(batches)
            every = tc.checkpoint_every_steps
            agreed = agree({"interrupted": interrupted.is_set(),
                            "spent": budget_spent(time.perf_counter() - part_start)}, world, device)
            if agreed["interrupted"]:
                interrupted.set()
            if mid_epoch and (interrupted.is_set() or (every and state["step"] % every == 0)):
                state["epoch_progress"] = dict(sums=dict(sums), tokens=tokens, seconds=time.perf_counter() - t0,
                                               first_batch=first_batch)
                state["train_seconds"] += time.perf_counter() - part_start
                part_start = time.perf_counter()
                path = checkpoint()
                del state["epoch_progress"]
                if interrupted.is_set():
                    raise TrainingInterrupted(f"interrupted at step {state['step']}: checkpoint written to {path}; "
                                              "run the same command with --resume to continue")
            snapshot_due(time.perf_counter() - part_start)
            if agreed["spent"]:
                stop = True
                break
        seconds = time.perf_counter() - t0
        state["train_seconds"] += time.perf_counter() - part_start
        val = evaluate(model, valid_set, replace(cfg.eval, iw_samples=cfg.eval.valid_iw_samples or 1), device,
                       iw=cfg.eval.valid_iw_samples > 0, seed=cfg.seed, progress=False, world=world)
        val_loss = strategies.selection_loss(state, val, -val.elbo)  # −ELBO unless a strategy selects otherwise
        val_loss = broadcast(val_loss, world)  # the lr rule, early stopping and reloads follow rank 0
        whole_epoch = state["batch_in_epoch"] >= len(batches)
        events = strategies.after_validation(state, val, whole_epoch)
        weight = strategies.kl_weight(state, kl_weight(state["step"], steps_per_epoch, tc, state["schedule_start_step"]))
        record = {"split": "valid", "step": state["step"], "epoch": state["epoch"] + 1, "loss": val_loss,
                  "rec": val.rec, "kl": val.kl, "mi": val.mi, "mi_batch": val.mi_batch, "au": val.au,
                  "nll": val.nll, "iw_samples": val.iw_samples, "ppl": val.ppl, "kl_weight": weight, "lr": state["lr"],
                  "train_seconds": state["train_seconds"],
                  "seconds": seconds, "tokens_per_s": tokens / max(seconds, 1e-9),
                  "epoch_fraction": (state["batch_in_epoch"] - first_batch) / len(batches),
                  "bad_steps": state["bad_steps"], **strategies.fields(state, sums)}
        metrics.write(record)
        log.info(_epoch_line(record, tc.max_epochs))
        for event in events:
            loop.event(event)
        if val_loss < state["best_val"]:
            state["best_val"] = val_loss
            if world.main:
                save_model_dir(model, tokenizer, run / MODEL_DIR)
            barrier(world)  # before any rank reloads the best model
        if whole_epoch:  # the lr rule applies
            if _lr_schedule(state, val_loss, tc):
                loop.load_best()
                loop.optimizer, _ = make_optimizers(model, critic, cfg, state["lr"])  # He et al. rebuild it
                stop = stop or state["n_decays"] >= tc.max_lr_decays
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
            if strategies.after_epoch(loop):  # a strategy restarted the run (Li et al.'s VAE stage)
                stop = budget_spent()  # the lr decays before the restart do not end the run
        path = checkpoint()
        if agree({"interrupted": interrupted.is_set()}, world, device)["interrupted"]:
            raise TrainingInterrupted(f"interrupted at step {state['step']}: checkpoint written to {path}; "
                                      "run the same command with --resume to continue")


class _Loop:
    """The running loop as a strategy's hooks see it (:class:`textvae.strategies.Loop`)."""

    def __init__(self, run: Path, cfg: Config, model, critic, state: dict, device, metrics: Loggers, optimizer):
        self.run, self.cfg, self.model, self.critic, self.state = run, cfg, model, critic, state
        self.device, self.metrics, self.optimizer = device, metrics, optimizer
        self.batches: list = []  # this epoch's training batches
        self.step = None  # this step's counted ``train_step(batch, update=...)``, set by the loop

    def random_batch(self):
        """A training batch drawn uniformly, with replacement (He et al.'s ``np.random.random_integers``)."""
        return self.batches[random.randrange(len(self.batches))].to(self.device)

    def event(self, record: dict) -> None:
        self.metrics.write({"split": "event", "step": self.state["step"], **record})

    def load_best(self) -> None:
        best, _ = load_model_dir(self.run / MODEL_DIR, self.device)
        self.model.load_state_dict(best.state_dict())

    def restart_schedules(self, lr: float) -> None:
        """A fresh run from this step: the lr rule (lr, best loss, patience, decay count), the KL schedule
        and the optimiser all start over."""
        self.state.update(schedule_start_step=self.state["step"], schedule_start_epoch=self.state["epoch"],
                          best_val=math.inf, plateau_best=math.inf, bad_epochs=0, n_decays=0, lr=lr)
        self.optimizer, _ = make_optimizers(self.model, self.critic, self.cfg, lr)


def final_evaluation(run: Path, cfg: Config, test_set: TextDataset, device, progress: bool = True,
                     world: World | None = None) -> EvalResult:
    """Evaluate the best model on the test split (sharded over the ranks under torchrun); rank 0 writes
    eval_test.json."""
    world = world or World()
    model, _ = load_model_dir(run / MODEL_DIR, device)
    t0 = time.perf_counter()
    result = evaluate(model, test_set, cfg.eval, device, iw=True, seed=cfg.seed, progress=progress, world=world)
    record = {"split": "test", **result.to_dict(), "seconds": time.perf_counter() - t0}
    if world.main:
        result.per_sequence.save(run / PER_SEQUENCE_FILE)  # for paired comparisons (textvae compare)
        atomic_write_text(run / "eval_test.json", json.dumps(record, indent=2) + "\n")
    return result
