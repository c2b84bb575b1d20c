"""One BAQ refinement: the run's model, the plan's units, pins, budget and candidate bits, and
the loop that trains the bits with the weights, rounds them and fine-tunes (docs/design.md §4.7).
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fqopt._io import atomic_path, write_json
from fqopt.apply import plan_layer_bits
from fqopt.baq._bits import BitWidths, fixed_bit_weights
from fqopt.baq._budget import AugmentedLagrangian, rounding_costs
from fqopt.baq._distill import distillation_loss
from fqopt.baq._fairness import group_losses, make_fairness
from fqopt.baq._result import RefineResult
from fqopt.baq._state import STATE_SCHEMA, cpu_state, load_finetune, load_state, save_state
from fqopt.errors import UserError
from fqopt.evaluation import evaluate as evaluate_model
from fqopt.discovery import default_pins, discover_units, quantizable_layers
from fqopt.plan import AllocationPlan
from fqopt.profiling import DEFAULT_BITS
from fqopt.solvers import AllocationProblem, solve
from fqopt.training import augment_batch, epoch_order
from fqopt.units import check_bits, check_budget_kind


class RefineSession:
    """One refinement: the run's model, the plan's units, pins, budget and candidate bits."""

    def __init__(self, run, plan, *, device, budget, budget_kind, bits, pin, quantizer,
                 allow_over_budget, source="<plan>"):
        self.run, self.static_plan, self.device, self.quantizer = run, plan, device, quantizer
        self.dataset = run.dataset()
        model = run.model()
        size = self.dataset.image_size
        self.units = discover_units(model, plan.granularity, pin="none",
                                    input_size=(3, size, size))
        plan.validate(self.units, model=run.model_name)
        self.init_bits = plan.unit_bits(self.units)
        self.model = model.to(device)
        named = dict(quantizable_layers(self.model))
        self.modules = {name: named[name] for name in self.units.layer_names}

        # pinned layers keep the plan's bits
        if isinstance(pin, str) and pin == "plan":
            recorded = (plan.meta or {}).get("pinned")
            pin_names = list(recorded) if recorded is not None else default_pins(model)
        elif pin is None or (isinstance(pin, str) and pin == "none"):
            pin_names = []
        else:
            pin_names = [p.strip() for p in pin.split(",")] if isinstance(pin, str) else list(pin)
        unknown = [p for p in pin_names if not self.units.has_layer(p)]
        if unknown:
            raise UserError(f"cannot pin {unknown}: not a Conv2d/Linear layer of "
                            f"{run.model_name}")
        self.pinned = set(pin_names)

        # candidate bits: the plan's (a uniform plan lists only its own bits, so it gets the
        # profiling defaults), plus every bit-width the plan uses
        if bits is None:
            uniform = str(plan.objective or "").startswith("uniform")
            cands = set(int(b) for b in plan.bits) | (set(DEFAULT_BITS) if uniform else set())
        else:
            cands = set(int(b) for b in bits)
            check_bits(list(cands), what="candidate bit-width")
        cands |= set(int(b) for b in np.unique(self.init_bits))
        self.bits = np.array(sorted(cands), dtype=np.int64)
        check_bits(self.bits.tolist(), what="candidate bit-width")

        # the budget
        recorded = plan.budget if isinstance(plan.budget, dict) else None
        kind = check_budget_kind(budget_kind or (recorded or {}).get("kind") or "avg_bits")
        self.budget_kind = kind
        self.problem = self._problem(np.zeros((len(self.units), 1, len(self.bits))), 0.0)
        plan_usage = self.problem.budget_used(self.init_bits)
        budget_given = budget is not None
        if budget is None:
            if recorded and recorded.get("kind") == kind and recorded.get("value") is not None:
                budget = float(recorded["value"])
            else:
                budget = plan_usage
        try:
            budget = float(budget)
        except (TypeError, ValueError):
            raise UserError(f"budget must be a number, got {budget!r}") from None
        if not math.isfinite(budget) or budget <= 0:
            raise UserError(f"budget must be a positive number, got {budget}")
        self.problem = self.problem.with_budget(budget)
        self.budget = budget
        if not self.problem.is_budget_feasible:
            raise UserError(f"refine: {self.problem.infeasibility_message()}")
        if self.problem.usage(self.init_bits) > self.problem.cap and not allow_over_budget:
            origin = "given" if budget_given else "recorded in the plan"
            raise UserError(f"plan {source} uses {plan_usage:.6g} {kind}, over the budget "
                            f"{budget:.6g} {kind} ({origin}); allocate a plan within the budget "
                            "or pass --allow-over-budget to let refinement pull it down")
        # a_u: what one bit of unit u spends (weights; MACs × activation bits for BOPs)
        self.budget_weights = self.units.budget_weights(
            kind, self.problem.activation_bits).astype(np.float64)

    @property
    def budget_spec(self) -> dict:
        return {"kind": self.budget_kind, "value": self.budget}

    def _problem(self, costs, budget):
        """The rounding's AllocationProblem over the plan's units (sizes, MACs and overhead from
        the shared unit model); pinned layers keep the plan's own bits, unit by unit."""
        slices = self.units.unit_slices()
        pins = {layer: self.init_bits[slices[layer]] for layer in getattr(self, "pinned", ())}
        return AllocationProblem.from_units(
            self.units, costs, bits=self.bits, budget=budget, budget_kind=self.budget_kind,
            objective="balanced", pins=pins, ties=None, group_names=["rounding"],
            source="BAQ rounding")

    # ------------------------------------------------------------------ driver
    def run_all(self, *, out_dir, settings, epochs, finetune_epochs, resume, force, evaluate,
                callback):
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"refine output {out_dir} is a file; --out names a folder")
        bits_path, ft_path = out_dir / "baq_state.pt", out_dir / "finetune_state.pt"
        outputs = [out_dir / n for n in ("plan.json", "model.pt")]
        out_dir.mkdir(parents=True, exist_ok=True)
        if force:
            saved = None
            for p in (bits_path, ft_path):
                p.unlink(missing_ok=True)
        else:
            saved = load_state(bits_path, settings, resume)
            if saved is None and any(p.exists() for p in outputs):
                raise UserError(f"refine output {out_dir} already holds a refinement without a "
                                "checkpoint to resume; pass --force to overwrite it")
        if saved is not None and saved["epoch"] > epochs:
            raise UserError(f"refine checkpoint {bits_path} has {saved['epoch']} epochs, more "
                            f"than the {epochs} asked for; pass --force to start over")

        torch.manual_seed(int(settings["seed"]))
        num_groups = self.dataset.num_groups
        fair = make_fairness(settings["fairness"], num_groups)
        bw = self._bit_widths()
        opt = self._optimizer(settings, bw)
        al = AugmentedLagrangian(rho=settings["lambda_budget"])
        history: list[dict] = []
        start = 0
        if saved is not None:
            self.model.load_state_dict(saved["model"])
            bw.load_state_dict(saved["bits"])
            opt.load_state_dict(saved["optimizer"])
            al.mu = float(saved["mu"])
            fair.load_state_dict(saved["fairness"])
            history = list(saved["history"])
            start = int(saved["epoch"])
        cap_g = self._constraint_fn()

        def save_bits(epoch):
            save_state(bits_path, {
                "schema": STATE_SCHEMA, "settings": settings, "epoch": epoch,
                "model": cpu_state(self.model), "bits": cpu_state(bw),
                "optimizer": opt.state_dict(), "mu": al.mu, "fairness": fair.state_dict(),
                "history": history})

        if saved is None:  # claim the folder for this plan before the first epoch
            save_bits(0)

        # ---------------- phase 1: bits and weights together
        for epoch in range(start, epochs):
            history.append(self._epoch(epoch, epochs, settings, opt, fair, callback, bw=bw,
                                       al=al, cap_g=cap_g))
            save_bits(epoch + 1)

        # ---------------- rounding under the exact budget
        continuous = bw.unit_bits().detach().cpu().numpy()
        base = {"plan": settings["plan"], "bits_epochs": epochs,
                "continuous": hashlib.sha256(continuous.tobytes()).hexdigest()[:16]}
        ft_saved = None if force else load_finetune(ft_path, settings, base)
        if ft_saved is not None:
            plan = AllocationPlan.from_dict(ft_saved["plan"], source=str(ft_path))
            rounding = dict(ft_saved["rounding"])
        else:
            plan, rounding = self._round(continuous, settings)

        # ---------------- phase 2: fixed-bit fine-tune
        layer_bits = plan_layer_bits(plan, self.device)
        ft_opt = self._optimizer(settings, None)
        ft_start, ft_history = 0, []
        if ft_saved is not None:
            self.model.load_state_dict(ft_saved["model"])
            ft_opt.load_state_dict(ft_saved["optimizer"])
            fair.load_state_dict(ft_saved["fairness"])
            ft_start = int(ft_saved["epoch"])
            ft_history = list(ft_saved["history"])
            if ft_start > finetune_epochs:
                raise UserError(f"refine checkpoint {ft_path} has {ft_start} fine-tune epochs, "
                                f"more than the {finetune_epochs} asked for; pass --force to "
                                "start over")
        for epoch in range(ft_start, finetune_epochs):
            ft_history.append(self._epoch(epoch, finetune_epochs, settings, ft_opt, fair,
                                          callback, layer_bits=layer_bits))
            save_state(ft_path, {
                "schema": STATE_SCHEMA, "settings": settings, "base": base, "epoch": epoch + 1,
                "plan": plan.to_dict(), "rounding": rounding, "model": cpu_state(self.model),
                "optimizer": ft_opt.state_dict(), "fairness": fair.state_dict(),
                "history": ft_history})
        history = history + ft_history

        # ---------------- outputs
        checkpoint = out_dir / "model.pt"
        with atomic_path(checkpoint) as tmp:
            torch.save(cpu_state(self.model), tmp)
        plan_path = out_dir / "plan.json"
        plan.save(plan_path)
        result = RefineResult(plan=plan, static_plan=self.static_plan, out_dir=out_dir,
                              checkpoint=checkpoint, plan_path=plan_path,
                              budget=self.budget_spec, continuous_bits=continuous,
                              rounding=rounding, history=history, settings=settings)
        if evaluate:
            self._evaluate(result, callback)
            for name in ("report_search", "report_test", "static_report_search",
                         "static_report_test"):
                getattr(result, name).save(out_dir / f"{name}.json")
        write_json(out_dir / "history.json", history)
        summary = result.summary()
        summary["run"] = str(Path(self.run.path).resolve())
        write_json(out_dir / "refine.json", summary)
        return result

    def _optimizer(self, settings, bw):
        decay, no_decay = [], []
        for p in self.model.parameters():
            (decay if p.ndim > 1 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": settings["weight_decay"]},
                  {"params": no_decay, "weight_decay": 0.0}]
        if bw is not None and len(bw.params):
            # the bits get their own rate and no decay (decay would pull them towards 0 bits)
            groups.append({"params": list(bw.params), "lr": settings["bit_lr"],
                           "weight_decay": 0.0})
        return torch.optim.AdamW(groups, lr=settings["lr"])

    def _constraint_fn(self):
        """``g(bw)``: budget violation in average-bit units (≤ 0 is within the budget)."""
        total = float(self.budget_weights.sum())
        cap = float(self.problem.cap)

        def g(bw: BitWidths) -> torch.Tensor:
            return bw.average_bits() - cap / total

        return g

    def steps_per_epoch(self, settings) -> int:
        """Steps of one epoch: a pass over the train split in whole batches, capped by
        ``steps_per_epoch``."""
        steps = max(1, len(self.dataset.split("train")) // settings["batch_size"])
        if settings["steps_per_epoch"] is not None:
            steps = min(steps, settings["steps_per_epoch"])
        return steps

    def _batches(self, epoch, settings, phase):
        """``(x, y, g)`` batches of one epoch of the train split, on the device, augmented;
        deterministic in (seed, phase, epoch)."""
        ds, bs, seed = self.dataset, settings["batch_size"], settings["seed"]
        train_idx = ds.split("train")
        steps = self.steps_per_epoch(settings)
        offset = 0 if phase == "bits" else 10_000   # the phases draw different orders
        order = epoch_order(ds.groups, train_idx, offset + epoch, seed, settings["balanced"])
        gen = torch.Generator().manual_seed(seed * 1000 + offset + epoch)
        for step in range(steps):
            x, y, g = ds.get_batch(order[step * bs:(step + 1) * bs])
            x, y = x.to(self.device, non_blocking=True), y.to(self.device)
            if settings["augment"]:
                x = augment_batch(x, gen)
            yield steps, x, y, g

    @torch.no_grad()
    def _teacher_logits(self, x) -> torch.Tensor:
        """The run's FP model on ``x`` (eval mode, loaded once, frozen): the distillation
        teacher."""
        if getattr(self, "_teacher", None) is None:
            self._teacher = self.run.model().to(self.device).eval()
            self._teacher.requires_grad_(False)
        return self._teacher(x).float()

    def _step(self, x, y, g, settings, opt, fair, *, bw=None, al=None, cap_g=None,
              layer_bits=None) -> tuple[float, float, float, float]:
        """One optimizer step: bits and weights (``bw`` given) or weights at fixed
        ``layer_bits``. Returns (loss, cross-entropy, fairness term, seconds)."""
        device = self.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        if bw is not None:
            weights = bw.quantized_weights(self.modules, self.quantizer)
        else:
            weights = fixed_bit_weights(self.modules, layer_bits, self.quantizer)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = torch.func.functional_call(self.model, weights, (x,))
        per = nn.functional.cross_entropy(logits.float(), y, reduction="none")
        alpha = settings.get("distill", 0.0)
        if alpha > 0:
            per = (1 - alpha) * per + alpha * distillation_loss(
                logits.float(), self._teacher_logits(x), settings["distill_temperature"])
        ce = per.mean()
        loss = ce
        r = None
        if settings["lambda_fair"] > 0:
            losses, present = group_losses(per, g, self.dataset.num_groups)
            r = fair(losses, present)
            loss = loss + settings["lambda_fair"] * r
        if bw is not None:
            loss = loss + al.penalty(cap_g(bw)).to(loss.dtype)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        opt.step()
        if bw is not None:
            bw.project_()
            with torch.no_grad():
                al.update(float(cap_g(bw)))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        return (float(loss.detach()), float(ce.detach()),
                0.0 if r is None else float(r.detach()), seconds)

    def _epoch(self, epoch, epochs, settings, opt, fair, callback, *, bw=None, al=None,
               cap_g=None, layer_bits=None) -> dict:
        """One epoch; with ``bw`` the bits learn (phase 1), else fixed ``layer_bits``."""
        phase = "bits" if bw is not None else "finetune"
        stage = (f"refine {epoch + 1}/{epochs}" if bw is not None
                 else f"fine-tune {epoch + 1}/{epochs}")
        self.model.train()
        sums = np.zeros(3)
        times = []
        steps = 0
        for steps, x, y, g in self._batches(epoch, settings, phase):
            *values, seconds = self._step(x, y, g, settings, opt, fair, bw=bw, al=al,
                                          cap_g=cap_g, layer_bits=layer_bits)
            sums += values
            times.append(seconds)
            if callback is not None:
                info = {"loss": sums[0] / len(times)}
                if bw is not None:
                    info["bits"] = float(bw.average_bits().detach())
                callback(stage, len(times), steps, **info)
        loss, ce, fair_value = (sums / max(1, len(times))).tolist()
        row = {"phase": phase, "epoch": epoch + 1, "steps": len(times), "loss": loss, "ce": ce,
               "fair": fair_value,
               # the first step pays one-off costs (allocations, autograd warm-up)
               "step_seconds": float(np.mean(times[1:] if len(times) > 1 else times))}
        if bw is not None:
            with torch.no_grad():
                row.update(avg_bits=float(bw.average_bits()), violation=float(cap_g(bw)),
                           mu=al.mu)
        return row

    def measure_steps(self, settings, steps: int) -> dict:
        """Median seconds of a refinement step and of a fixed-bit fine-tune step, alternated on
        the same batches (so load changes hit both alike)."""
        fair = make_fairness(settings["fairness"], self.dataset.num_groups)
        bw = self._bit_widths()
        opt_bits, opt_fixed = self._optimizer(settings, bw), self._optimizer(settings, None)
        al = AugmentedLagrangian(rho=settings["lambda_budget"])
        cap_g = self._constraint_fn()
        layer_bits = plan_layer_bits(self.static_plan, self.device)
        self.model.train()
        t_bits, t_fixed = [], []
        done, epoch = 0, 0
        while done < steps + 1:
            for _, x, y, g in self._batches(epoch, settings, "bits"):
                t_bits.append(self._step(x, y, g, settings, opt_bits, fair, bw=bw, al=al,
                                         cap_g=cap_g)[-1])
                t_fixed.append(self._step(x, y, g, settings, opt_fixed, fair,
                                          layer_bits=layer_bits)[-1])
                done += 1
                if done >= steps + 1:
                    break
            epoch += 1
        refine_s, fixed_s = float(np.median(t_bits[1:])), float(np.median(t_fixed[1:]))
        return {"steps": steps, "refine_step_s": refine_s, "fixed_step_s": fixed_s,
                "ratio": refine_s / fixed_s}

    def _bit_widths(self) -> BitWidths:
        return BitWidths(self.units, self.init_bits, fixed=self.pinned,
                         budget_weights=self.budget_weights, min_bits=int(self.bits.min()),
                         max_bits=int(self.bits.max())).to(self.device)

    def _round(self, continuous, settings):
        costs = rounding_costs(continuous, self.bits, self.budget_weights)
        problem = self._problem(costs, self.budget)
        result = solve(problem, settings["solver"])
        if not result.ok:
            raise UserError(f"BAQ rounding failed: the {result.backend} solve ended "
                            f"{result.status} ({result.message})")
        meta = {"refined_from": settings["plan"], "baq": {
            k: settings[k] for k in ("fairness", "lambda_fair", "lambda_budget", "quantizer",
                                     "seed")}, "pinned": sorted(self.pinned)}
        relaxed = (self.static_plan.meta or {}).get("pins_relaxed")
        if relaxed:   # the source plan's pins gave way to its budget: so do the refined plan's
            meta["pins_relaxed"] = dict(relaxed)
        plan = AllocationPlan.from_unit_bits(
            self.units, result.assignment, model=self.run.model_name,
            bits=self.bits.tolist(), budget=dict(result.budget),
            objective=f"baq:{settings['fairness']}", solver=result.summary(), meta=meta,
            quantizer=settings["quantizer"])
        rounding = {**result.summary(), "budget_used": float(result.budget_used)}
        return plan, rounding

    def _evaluate(self, result, callback):
        cb = None
        if callback is not None:
            def cb(stage, done, total, **info):
                callback("evaluate", done, total, **info)
        ds, q = self.dataset, self.quantizer
        result.report_search = evaluate_model(self.model, ds, "search", plan=result.plan,
                                              quantizer=q, callback=cb)
        result.report_test = evaluate_model(self.model, ds, "test", plan=result.plan,
                                            quantizer=q, callback=cb)
        static = self.run.model().to(self.device)
        result.static_report_search = evaluate_model(static, ds, "search", plan=self.static_plan,
                                                     quantizer=q, callback=cb)
        result.static_report_test = evaluate_model(static, ds, "test", plan=self.static_plan,
                                                   quantizer=q, callback=cb)
