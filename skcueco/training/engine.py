"""The training loop: device, mixed precision, steps, callbacks.

It runs any *task* over any loader and knows nothing of scikit-learn. A task
provides::

    on_epoch_begin(epoch)
    training_step(batch, epoch) -> (loss, logs)   # logs: dict of 0-d tensors
    after_optimizer_step(step)
    on_epoch_end(epoch) -> dict of extra Python values for the history
    state_dict() / load_state_dict(state)   # optional: checkpoints, Ctrl-C
    model                                   # optional torch.nn.Module

After every epoch the whole training state (the parameters and buffers of
``task.model`` when there is one, else the optimised parameters, plus the
optimiser's state) is checked for NaN and infinity on its device, folded
into the epoch's single loss check: a diverged epoch is rolled back and
raises :class:`NonFiniteLossError`, so no non-finite state is ever kept.

Per-step values stay on the device and are summed there; they are read back
once per epoch, so the hot path has no host synchronisation: on a GPU the
loss is checked for NaN/inf only in the epoch's one read (see
``check_every``).
"""

import time
import uuid
import warnings
from contextlib import nullcontext

import torch

from .distributed import all_reduce_, get_world_size, is_main_process


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss becomes NaN or infinite."""


def resolve_amp(amp, device):
    """Autocast dtype for ``amp`` on ``device``, or None for full precision.

    Parameters
    ----------
    amp : {"auto", "bf16", "fp16"} or bool or None
        "auto": bf16 on CUDA devices that support it and on processors that
        compute bf16 natively (:func:`~skcueco.training.device.cpu_has_native_bf16`),
        full precision elsewhere. An explicit value always wins.
    device : torch.device

    Returns
    -------
    dtype : torch.dtype or None
    """
    if amp is None or amp is False:
        return None
    if amp == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        # looked up at call time, so that it can be patched
        from .device import cpu_has_native_bf16

        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return None
    if amp in ("bf16", True):
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    raise ValueError(f"amp must be 'auto', 'bf16', 'fp16', True, False or None; got {amp!r}.")


class Trainer:
    """Loop over epochs and batches, calling a task and callbacks.

    Parameters
    ----------
    device : torch.device
        Where batches are moved before ``training_step``.
    max_epochs : int
        Train until this many epochs are done in total.
    callbacks : list of Callback, default=()
    amp : see :func:`resolve_amp`, default=None
    check_every : int, default=None
        Also check the loss for NaN/inf every this many steps inside an
        epoch (a host sync each time); 0: only at the end of each epoch,
        where every step's loss is checked at once and a diverged epoch is
        rolled back whole. Default: :func:`default_check_every`, every step
        on the CPU, where a check costs nothing, and only at the epoch's
        end elsewhere (one host sync per epoch on a GPU).
    embed : callable, default=None
        ``embed(X) -> ndarray`` of features of the model being trained, for
        monitoring callbacks (e.g. a kNN accuracy on held-out data).

    Attributes
    ----------
    history : list of dict
        One record per finished epoch.
    epoch : int
        Number of finished epochs.
    stop_training : bool
        Set by a callback to stop after the current epoch.
    interrupted : bool
        Whether the last ``fit`` was stopped by ``KeyboardInterrupt``.
    failed : bool
        Whether the last ``fit`` ended with an exception.
    steps_per_epoch : int or None
        Steps in one epoch of the running ``fit`` (the loader's length),
        None for a loader without one.
    batch_size : int or None
        Samples per step of the running ``fit`` on this process (the
        loader's batch size), None when the loader does not say.
    run_id : str
        Identifies a training run across checkpoints: drawn at random here,
        restored by :meth:`load_state_dict` (a resumed or continued run keeps
        its id). :class:`~skcueco.callbacks.Checkpoint` uses it to tell its
        run's files from others.
    run_info : dict or None
        Plain data describing the run (version, parameters, input), stored
        with the id under ``"run"`` in :meth:`state_dict`; set by the caller.
    """

    def __init__(self, *, device, max_epochs, callbacks=(), amp=None, check_every=None,
                 embed=None):
        self.device = torch.device(device)
        self.max_epochs = max_epochs
        self.callbacks = list(callbacks)
        self.amp_dtype = resolve_amp(amp, self.device)
        if check_every is None:
            check_every = default_check_every(self.device)
        self.check_every = check_every
        self.history = []
        self.epoch = 0
        self.global_step = 0
        self.stop_training = False
        self.interrupted = False
        self.failed = False
        # os.urandom-based: the id draws nothing from torch's random streams
        self.run_id = uuid.uuid4().hex
        self.run_info = None
        self._epoch_start = None
        self.is_main_process = is_main_process()
        self.steps_per_epoch = self.batch_size = None
        self.task = self.optimizer = self.scheduler = self.scaler = None
        self.embed = embed

    def _call(self, hook, *args):
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def _backend_flags(self):
        # cuDNN autotuning pays off over thousands of same-shape steps; set
        # for this fit only, the caller's global flags are restored afterwards
        if self.device.type != "cuda":
            return nullcontext()
        cudnn = torch.backends.cudnn
        return cudnn.flags(enabled=cudnn.enabled, benchmark=True,
                           deterministic=cudnn.deterministic, allow_tf32=cudnn.allow_tf32)

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def fit(self, task, loader, optimizer, scheduler=None, state=None, *, restore_schedule=True):
        """Train ``task`` from ``self.epoch`` to ``max_epochs``.

        Parameters
        ----------
        task : object
            See the module docstring.
        loader : iterable of torch.Tensor
        optimizer : torch.optim.Optimizer
        scheduler : torch.optim.lr_scheduler.LRScheduler, default=None
            Stepped after every optimiser step.
        state : dict, default=None
            A :meth:`state_dict` to start from.
        restore_schedule : bool, default=True
            True resumes ``state`` exactly (a checkpoint of this same run).
            False continues an earlier run on a new schedule: weights,
            optimiser state, queue, centroids, counters and history come
            back, but the learning rates set in ``optimizer`` and the state
            of ``scheduler`` are this run's.

        Returns
        -------
        self : Trainer

        Notes
        -----
        ``KeyboardInterrupt`` ends training after the current step; the whole
        training state (task, optimiser, schedule, counters) is rolled back to
        the end of the last completed epoch and a warning says so. An epoch is
        complete once its record is in ``history``: an interrupt in its
        ``on_epoch_end`` callbacks (e.g. while a checkpoint is written) keeps
        it.

        A non-finite loss or training state rolls the state back the same
        way and raises :class:`NonFiniteLossError`.
        """
        self.task, self.optimizer, self.scheduler = task, optimizer, scheduler
        try:
            self.steps_per_epoch = len(loader)
        except TypeError:  # an iterable without a length
            self.steps_per_epoch = None
        # a DataLoader fed by a BatchSampler holds its batch size in the sampler
        self.batch_size = (getattr(loader, "batch_size", None)
                           or getattr(getattr(loader, "sampler", None), "batch_size", None))
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        if state is not None:
            self.load_state_dict(state, restore_schedule=restore_schedule)
        self.stop_training = self.interrupted = self.failed = False
        self._epoch_start = None  # set while an epoch is under way
        self._call("on_train_begin")
        try:
            with self._backend_flags():
                while self.epoch < self.max_epochs and not self.stop_training:
                    self._run_epoch(task, loader, optimizer, scheduler, self.scaler)
        except KeyboardInterrupt:
            self.interrupted = True
            if self._epoch_start is not None:
                self.load_state_dict(self._epoch_start)
                self._epoch_start = None
                where = f"during epoch {self.epoch + 1}"
            else:
                where = f"after epoch {self.epoch}"
            warnings.warn(
                f"Training was interrupted {where}; the model "
                f"is left as it was after epoch {self.epoch}.", RuntimeWarning,
            )
        except Exception:
            self.failed = True
            if self._epoch_start is not None:
                # never keep a half-done (possibly non-finite) epoch
                self.load_state_dict(self._epoch_start)
                self._epoch_start = None
            raise
        finally:
            self._call("on_train_end")
        return self

    def state_dict(self):
        """Everything needed to continue training exactly (CPU tensors)."""
        state = {
            "run": {**(self.run_info or {}), "id": self.run_id},
            "epoch": self.epoch,
            "global_step": self.global_step,
            "history": [dict(r) for r in self.history],
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
        }
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        if hasattr(self.task, "state_dict"):
            state["task"] = self.task.state_dict()
        return state

    def load_state_dict(self, state, *, restore_schedule=True):
        """Restore a :meth:`state_dict` into the running objects.

        With ``restore_schedule=False`` the optimiser's current learning
        rates and the scheduler are left as they are (see :meth:`fit`).

        Raises
        ------
        ValueError
            If the state does not fit the task (other parameters or data).
        """
        try:
            self._load_state_dict(state, restore_schedule)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ValueError(
                "The checkpoint does not match this training run (different "
                f"parameters or data?): {exc}"
            ) from exc

    def _load_state_dict(self, state, restore_schedule=True):
        if isinstance(state.get("run"), dict) and "id" in state["run"]:
            self.run_id = state["run"]["id"]
        self.epoch = state["epoch"]
        self.global_step = state["global_step"]
        self.history = [dict(r) for r in state["history"]]
        rates = [(g["lr"], g.get("initial_lr")) for g in self.optimizer.param_groups]
        # a copy: the optimiser updates its state in place, and ``state`` may
        # be kept by the caller (a warm start that fails must leave it intact)
        self.optimizer.load_state_dict(copy_state(state["optimizer"]))
        if not restore_schedule:
            for group, (lr, initial_lr) in zip(self.optimizer.param_groups, rates):
                group["lr"] = lr
                if initial_lr is not None:
                    group["initial_lr"] = initial_lr
        if state["scaler"]:  # empty when saved without a gradient scaler
            self.scaler.load_state_dict(state["scaler"])
        if restore_schedule and self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        if "task" in state:
            self.task.load_state_dict(state["task"])

    def _run_epoch(self, task, loader, optimizer, scheduler, scaler):
        # a copy to roll back to if the epoch is interrupted half-way
        self._epoch_start = copy_state(self.state_dict())
        epoch = self.epoch
        start = time.perf_counter()
        task.on_epoch_begin(epoch)
        self._call("on_epoch_begin", epoch)
        sums, n_steps = {}, 0
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        for batch in loader:
            batch = batch.to(self.device, non_blocking=True)
            with self._autocast():
                loss, logs = task.training_step(batch, epoch)
            nonfinite |= ~torch.isfinite(loss.detach())
            if (self.check_every and (self.global_step + 1) % self.check_every == 0
                    and _on_any_rank(nonfinite)):
                self._raise_nonfinite(epoch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None:
                scheduler.step()
            task.after_optimizer_step(self.global_step)
            logs = {"loss": loss.detach(), **logs}
            for key, value in logs.items():
                sums[key] = sums[key] + value.float() if key in sums else value.float()
            n_steps += 1
            self.global_step += 1
            self._call("on_batch_end", self.global_step, logs)
        if n_steps == 0:
            raise ValueError("The loader produced no batch: the data set is too small.")
        # the loss flag and the state check share the epoch's one host sync
        finite = _all_finite(_state_tensors(task, optimizer), self.device)
        flags = torch.stack([nonfinite, ~finite])
        bad_loss, bad_state = all_reduce_(flags.to(torch.int32), op="max").tolist()
        if bad_loss:
            self._raise_nonfinite(epoch)
        if bad_state:
            raise NonFiniteLossError(
                f"The model's weights or training state (parameters, BatchNorm "
                f"statistics, queue, centroids or optimiser state) became NaN or "
                f"infinite in epoch {epoch + 1}; training was stopped and the state "
                f"rolled back to the end of epoch {epoch}. The learning rate is "
                "probably too high (try a smaller `lr`), or the input holds extreme "
                "values."
            )
        # one collective per epoch: the history is the mean over all ranks
        keys = list(sums)
        means = all_reduce_(torch.stack([sums[k] for k in keys])) / (n_steps * get_world_size())
        record = {"epoch": epoch + 1}
        record.update(zip(keys, means.tolist()))
        record["lr"] = optimizer.param_groups[0]["lr"]
        record.update(task.on_epoch_end(epoch) or {})
        record["seconds"] = time.perf_counter() - start
        self.history.append(record)
        self.epoch += 1
        self._epoch_start = None  # complete: an interrupt from here on keeps it
        self._call("on_epoch_end", epoch, record)

    def _raise_nonfinite(self, epoch):
        raise NonFiniteLossError(
            f"The training loss became NaN or infinite in epoch {epoch + 1}; training "
            "was stopped. The learning rate is probably too high (try a smaller `lr`), "
            "or the input holds extreme values."
        )



def copy_state(obj):
    """Deep copy of a nested state with every tensor cloned to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: copy_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(copy_state(v) for v in obj)
    return obj


def _state_tensors(task, optimizer):
    """The floating-point tensors of the training state, detached."""
    model = getattr(task, "model", None)
    if isinstance(model, torch.nn.Module):
        tensors = list(model.parameters()) + list(model.buffers())
    else:
        tensors = [p for group in optimizer.param_groups for p in group["params"]]
    for param_state in optimizer.state.values():
        tensors.extend(v for v in param_state.values() if isinstance(v, torch.Tensor))
    return [t.detach() for t in tensors if t.is_floating_point() and t.numel()]


def default_check_every(device):
    """Steps between the in-epoch NaN/inf checks of the loss on ``device``.

    1 on the CPU, where reading the loss costs nothing and a bad step never
    reaches the optimiser; 0 (the end of each epoch only) elsewhere, where
    every read waits for the device: a diverged epoch is rolled back whole.
    """
    return 1 if torch.device(device).type == "cpu" else 0


def _all_finite(tensors, device):
    """0-d bool tensor on ``device``: whether every value of ``tensors`` is finite.

    One small reduction per tensor, all queued on the device: no host sync.
    """
    if not tensors:
        return torch.ones((), dtype=torch.bool, device=device)
    return torch.stack([torch.isfinite(t).all().to(device) for t in tensors]).all()


def _on_any_rank(flag):
    """Whether ``flag`` (a 0-d bool tensor) is set on this or any other rank."""
    return bool(all_reduce_(flag.to(torch.int32), op="max"))
