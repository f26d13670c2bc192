//! Today's training recipes, each against PyTorch (in the test command's `.venv`): the
//! cosine-with-warmup and one-cycle schedules step by step, label-smoothed and mixed
//! cross-entropy and its gradient, one AdamW step and one SGD step with decoupled decay,
//! and the moving average of the weights. Then on real data (scikit-learn's handwritten
//! digits) the modern recipe learns at least as well as the plain one, and each feature
//! gives the same artifact on one thread and two and after a SIGKILL and resume.
//!
//! The test command sets `PIPE_REQUIRE_TORCH=1`: there, a Python without torch fails
//! these tests instead of skipping them.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use pipe::backend::native::cpu::loss::cross_entropy;
use pipe::backend::native::NativeModel;
use pipe::backend::{Model, Optimizer, Targets};
use pipe::manifest::{SchedKeys, ScheduleKind};
use pipe::stages::train::Schedule;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Whether the test Python imports torch; with `PIPE_REQUIRE_TORCH=1`, a panic if not.
fn torch_ready() -> bool {
    let ok = Command::new(python())
        .args(["-c", "import torch"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("PIPE_REQUIRE_TORCH").is_ok_and(|v| v == "1") {
            panic!(
                "PIPE_REQUIRE_TORCH=1 but {} cannot import torch (scripts/bootstrap --with-python installs it)",
                python()
            );
        }
        eprintln!("skipped: {} has no torch", python());
    }
    ok
}

/// Run a Python script with `input` as JSON on its stdin; its stdout, as JSON.
fn torch(script: &str, input: &serde_json::Value) -> serde_json::Value {
    let mut child = Command::new(python())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the torch script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// `|a - b| <= rel * |b|` for every pair (and the same length).
fn assert_rel(a: &[f64], b: &[f64], rel: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= rel * y.abs(),
            "{what}[{i}]: pipe {x} vs torch {y} (rel. {:e})",
            (x - y).abs() / y.abs()
        );
    }
}

/// `|a - b| <= tol * max|b|` for every pair.
fn assert_close_to_scale(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * scale,
            "{what}[{i}]: pipe {x} vs torch {y} (scale {scale})"
        );
    }
}

fn keys(kind: ScheduleKind, lr: f64) -> SchedKeys {
    SchedKeys {
        kind,
        lr,
        power: 1.0,
        warmup_epochs: 0.0,
        warmup_start_factor: 0.01,
        min_lr: 0.0,
        max_lr: lr,
        pct_start: 0.3,
        div_factor: 25.0,
        final_div_factor: 1e4,
        cycle_momentum: true,
        base_momentum: 0.85,
        max_momentum: 0.95,
    }
}

const SCHEDULES: &str = r#"
import json, sys, warnings
import torch
from torch.optim.lr_scheduler import LinearLR, CosineAnnealingLR, SequentialLR, OneCycleLR
warnings.filterwarnings("ignore")
out = []
for c in json.load(sys.stdin):
    p = torch.nn.Parameter(torch.zeros(1))
    if c["opt"] == "sgd":
        opt = torch.optim.SGD([p], lr=c["lr"], momentum=0.9)
    else:
        opt = torch.optim.Adam([p], lr=c["lr"])
    T = c["total"]
    if c["kind"] == "cosine":
        W = c["warmup"]
        cos = CosineAnnealingLR(opt, T_max=T - W, eta_min=c["min_lr"])
        if W > 0:
            warm = LinearLR(opt, start_factor=c["start_factor"], end_factor=1.0, total_iters=W)
            sched = SequentialLR(opt, [warm, cos], milestones=[W])
        else:
            sched = cos
    else:
        sched = OneCycleLR(opt, max_lr=c["lr"], total_steps=T, pct_start=c["pct_start"],
                           div_factor=c["div"], final_div_factor=c["final_div"],
                           base_momentum=c["base_m"], max_momentum=c["max_m"])
    lrs, moms = [], []
    for t in range(T):
        g = opt.param_groups[0]
        lrs.append(g["lr"])
        moms.append(g["momentum"] if c["opt"] == "sgd" else g["betas"][0])
        opt.step()
        sched.step()
    out.append({"lr": lrs, "momentum": moms})
print(json.dumps(out))
"#;

#[test]
fn cosine_with_warmup_and_one_cycle_equal_torch_schedulers_at_every_step() {
    if !torch_ready() {
        return;
    }
    // 10 epochs of 7 steps: 70 steps, as torch steps a scheduler after every batch.
    let (epochs, per_epoch) = (10, 7);
    let mut cases = Vec::new();
    let mut ours = Vec::new();
    let cosine = |warmup: f64, start: f64, min_lr: f64| {
        let mut k = keys(ScheduleKind::Cosine, 0.1);
        k.warmup_epochs = warmup;
        k.warmup_start_factor = start;
        k.min_lr = min_lr;
        k
    };
    for (k, opt) in [
        (cosine(2.0, 0.01, 1e-4), "sgd"),
        (cosine(0.0, 0.01, 0.0), "sgd"),
        (cosine(1.5, 0.2, 1e-3), "adam"),
        (keys(ScheduleKind::Onecycle, 0.2), "sgd"),
        (
            SchedKeys {
                pct_start: 0.25,
                div_factor: 10.0,
                final_div_factor: 100.0,
                base_momentum: 0.8,
                max_momentum: 0.9,
                ..keys(ScheduleKind::Onecycle, 3e-3)
            },
            "adam",
        ),
    ] {
        let s = Schedule::from_keys(&k, &[], epochs, per_epoch).unwrap();
        let total = epochs * per_epoch;
        let lrs: Vec<f64> = (0..total).map(|t| s.lr(t / per_epoch, t)).collect();
        let moms: Vec<Option<f64>> = (0..total).map(|t| s.momentum(t)).collect();
        ours.push((k.kind, lrs, moms));
        cases.push(serde_json::json!({
            "kind": if k.kind == ScheduleKind::Cosine { "cosine" } else { "onecycle" },
            "opt": opt,
            "lr": k.lr,
            "total": total,
            "warmup": (k.warmup_epochs * per_epoch as f64).round() as usize,
            "start_factor": k.warmup_start_factor,
            "min_lr": k.min_lr,
            "pct_start": k.pct_start,
            "div": k.div_factor,
            "final_div": k.final_div_factor,
            "base_m": k.base_momentum,
            "max_m": k.max_momentum,
        }));
    }
    let theirs = torch(SCHEDULES, &serde_json::Value::Array(cases));
    for (i, (kind, lrs, moms)) in ours.iter().enumerate() {
        let t = &theirs[i];
        assert_rel(lrs, &floats(&t["lr"]), 1e-7, &format!("case {i} lr"));
        if *kind == ScheduleKind::Onecycle {
            let m: Vec<f64> = moms.iter().map(|m| m.expect("cycled")).collect();
            assert_rel(
                &m,
                &floats(&t["momentum"]),
                1e-7,
                &format!("case {i} momentum"),
            );
        } else {
            assert!(moms.iter().all(|m| m.is_none()), "cosine sets no momentum");
        }
    }
    // The warmup really starts low and the one-cycle peak is max_lr.
    assert!((ours[0].1[0] - 0.1 * 0.01).abs() < 1e-12);
    let peak = ours[3].1.iter().cloned().fold(0.0, f64::max);
    assert!((peak - 0.2).abs() < 1e-12, "{peak}");
}

const LOSSES: &str = r#"
import json, sys
import torch
import torch.nn.functional as F
out = []
for c in json.load(sys.stdin):
    n, k = c["n"], c["k"]
    x = torch.tensor(c["logits"], dtype=torch.float32).view(n, k).requires_grad_()
    a = torch.tensor(c["labels"])
    eps = c["smoothing"]
    if c["lambda"] is None:
        loss = F.cross_entropy(x, a, label_smoothing=eps)
    else:
        b = a.roll(1, 0)
        lam = c["lambda"]
        loss = lam * F.cross_entropy(x, a, label_smoothing=eps) \
            + (1 - lam) * F.cross_entropy(x, b, label_smoothing=eps)
    loss.backward()
    out.append({"loss": loss.item(), "grad": x.grad.flatten().tolist()})
print(json.dumps(out))
"#;

#[test]
fn smoothed_and_mixed_cross_entropy_and_its_gradient_equal_torch() {
    if !torch_ready() {
        return;
    }
    let (n, k) = (12usize, 7usize);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let logits: Vec<f32> = (0..n * k).map(|_| rng.random_range(-4.0f32..4.0)).collect();
    let labels: Vec<i64> = (0..n).map(|_| rng.random_range(0..k as i64)).collect();
    // The batch rolled by one, as mixup and CutMix pair it.
    let rolled: Vec<i64> = (0..n).map(|i| labels[(i + n - 1) % n]).collect();
    let cases: [(f64, Option<f64>); 5] = [
        (0.0, None),
        (0.1, None),
        (0.3, None),
        (0.0, Some(0.37)),
        (0.1, Some(0.81)),
    ];
    let input: Vec<serde_json::Value> = cases
        .iter()
        .map(|(eps, lam)| {
            serde_json::json!({"n": n, "k": k, "logits": logits, "labels": labels,
                "smoothing": eps, "lambda": lam})
        })
        .collect();
    let theirs = torch(LOSSES, &serde_json::Value::Array(input));
    for (i, (eps, lam)) in cases.iter().enumerate() {
        let targets = Targets {
            labels: &labels,
            mix: lam.map(|l| (rolled.as_slice(), l)),
            smoothing: *eps,
        };
        let (loss, grad, _) = cross_entropy(&logits, k, &targets);
        let t = &theirs[i];
        assert_rel(
            &[loss as f64],
            &[t["loss"].as_f64().unwrap()],
            1e-6,
            &format!("loss (smoothing {eps}, lambda {lam:?})"),
        );
        let ours: Vec<f64> = grad.iter().map(|&g| g as f64).collect();
        assert_close_to_scale(
            &ours,
            &floats(&t["grad"]),
            1e-6,
            &format!("dlogits (smoothing {eps}, lambda {lam:?})"),
        );
    }
}

const OPTIMIZERS: &str = r#"
import json, sys
import torch
c = json.load(sys.stdin)
f = lambda v: torch.tensor(v, dtype=torch.float32)
out = {}
# AdamW, step 3 from a state after 2 steps.
p = torch.nn.Parameter(f(c["p"]))
opt = torch.optim.AdamW([p], lr=c["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=c["wd"],
                        foreach=False)
opt.state[p] = {"step": torch.tensor(2.0), "exp_avg": f(c["m"]), "exp_avg_sq": f(c["v"])}
p.grad = f(c["g"])
opt.step()
out["adamw"] = {"p": p.detach().tolist(), "m": opt.state[p]["exp_avg"].tolist(),
                "v": opt.state[p]["exp_avg_sq"].tolist()}
# SGD with decoupled decay (SGDW): w *= 1 - lr * wd, then torch's SGD step, whose momentum
# buffer b is pipe's velocity over -lr.
for nesterov in (False, True):
    p = torch.nn.Parameter(f(c["p"]))
    opt = torch.optim.SGD([p], lr=c["lr_sgd"], momentum=0.9, nesterov=nesterov, foreach=False)
    opt.state[p] = {"momentum_buffer": f(c["vel"]) / -c["lr_sgd"]}
    with torch.no_grad():
        p.mul_(1 - c["lr_sgd"] * c["wd"])
    p.grad = f(c["g"])
    opt.step()
    out["sgdw_nesterov" if nesterov else "sgdw"] = {
        "p": p.detach().tolist(),
        "vel": (opt.state[p]["momentum_buffer"] * -c["lr_sgd"]).tolist()}
print(json.dumps(out))
"#;

#[test]
fn one_adamw_step_and_one_decoupled_sgd_step_equal_torch_optim() {
    if !torch_ready() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let len = 64;
    let mut draw =
        |lo: f32, hi: f32| -> Vec<f32> { (0..len).map(|_| rng.random_range(lo..hi)).collect() };
    let (p, g, m, v, vel) = (
        draw(-1.0, 1.0),
        draw(-0.5, 0.5),
        draw(-0.1, 0.1),
        draw(1e-4, 1e-2),
        draw(-0.02, 0.02),
    );
    let (lr, lr_sgd, wd) = (1e-3, 0.05, 0.05);
    let theirs = torch(
        OPTIMIZERS,
        &serde_json::json!({"p": p, "g": g, "m": m, "v": v, "vel": vel, "lr": lr,
            "lr_sgd": lr_sgd, "wd": wd}),
    );
    let to64 = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let adamw = Optimizer::Adamw {
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-8,
        weight_decay: wd,
    };
    let (mut pa, mut ma, mut va) = (p.clone(), m.clone(), v.clone());
    adamw.update(lr, 3.0, &mut pa, &g, &mut ma, &mut va);
    let t = &theirs["adamw"];
    assert_rel(&to64(&pa), &floats(&t["p"]), 1e-6, "AdamW weights");
    assert_close_to_scale(&to64(&ma), &floats(&t["m"]), 1e-6, "AdamW first moment");
    assert_close_to_scale(&to64(&va), &floats(&t["v"]), 1e-6, "AdamW second moment");
    // The decay really acted: without it the weights differ by far more than 1e-6.
    let mut plain = p.clone();
    let (mut m2, mut v2) = (m.clone(), v.clone());
    Optimizer::Adamw {
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-8,
        weight_decay: 0.0,
    }
    .update(lr, 3.0, &mut plain, &g, &mut m2, &mut v2);
    assert!(plain.iter().zip(&pa).any(|(a, b)| (a - b).abs() > 1e-5));
    for (nesterov, name) in [(false, "sgdw"), (true, "sgdw_nesterov")] {
        let sgdw = Optimizer::Sgd {
            momentum: 0.9,
            nesterov,
            weight_decay: wd,
        };
        let (mut ps, mut vs, mut unused) = (p.clone(), vel.clone(), vec![0f32; len]);
        sgdw.update(lr_sgd, 3.0, &mut ps, &g, &mut vs, &mut unused);
        let t = &theirs[name];
        assert_rel(
            &to64(&ps),
            &floats(&t["p"]),
            1e-6,
            &format!("{name} weights"),
        );
        assert_close_to_scale(
            &to64(&vs),
            &floats(&t["vel"]),
            1e-6,
            &format!("{name} velocity"),
        );
    }
}

const EMA: &str = r#"
import json, sys
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
c = json.load(sys.stdin)
names = c["names"]
class Holder(torch.nn.Module):
    def __init__(self, values):
        super().__init__()
        for i, v in enumerate(values):
            self.register_buffer(f"t{i}", torch.tensor(v, dtype=torch.float32))
model = Holder(c["steps"][0])
ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(c["decay"]), use_buffers=True)
for values in c["steps"]:
    with torch.no_grad():
        for i, v in enumerate(values):
            getattr(model, f"t{i}").copy_(torch.tensor(v, dtype=torch.float32))
    ema.update_parameters(model)
print(json.dumps({n: getattr(ema.module, f"t{i}").tolist() for i, n in enumerate(names)}))
"#;

#[test]
fn the_moving_average_after_n_steps_equals_torch_averaged_model() {
    if !torch_ready() {
        return;
    }
    let g = gradcheck::network(
        "{ conv2d = { filters = 4, kernel = 3 } }, { batchnorm = {} }, { relu = {} }, { flatten = {} }, { dense = 3 }, { softmax = {} }",
        "[6, 6, 3]",
    );
    let mut model = NativeModel::new(&g, 4).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let n = 8;
    let x: Vec<f32> = (0..n * 108)
        .map(|_| rng.random_range(0.0f32..1.0))
        .collect();
    let y: Vec<i64> = (0..n as i64).map(|i| i % 3).collect();
    let opt = Optimizer::Sgd {
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
    };
    let decay = 0.9;
    let mut steps = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for s in 0..6u64 {
        model.train_step(&x, &y, &opt, 0.05, s).unwrap();
        model.ema_update(decay).unwrap();
        let st = model.state();
        if names.is_empty() {
            names = st
                .tensors
                .keys()
                .filter(|k| st.tensors.contains_key(&format!("ema/{k}")))
                .cloned()
                .collect();
            assert!(
                names.iter().any(|k| k.ends_with("/moving_mean")),
                "{names:?}"
            );
            assert!(names.iter().any(|k| k.ends_with("/kernel")), "{names:?}");
        }
        let values: Vec<Vec<f32>> = names.iter().map(|k| st.tensors[k].data.clone()).collect();
        steps.push(values);
    }
    let theirs = torch(
        EMA,
        &serde_json::json!({"names": names, "steps": steps, "decay": decay}),
    );
    let st = model.state();
    for name in &names {
        let ours: Vec<f64> = st.tensors[&format!("ema/{name}")]
            .data
            .iter()
            .map(|&v| v as f64)
            .collect();
        assert_close_to_scale(&ours, &floats(&theirs[name]), 1e-6, &format!("ema/{name}"));
        // And it is an average, not the weights.
        assert_ne!(
            st.tensors[name].data,
            st.tensors[&format!("ema/{name}")].data
        );
    }
    // The state for inference holds the average in the weights' place; swapping twice
    // changes nothing.
    let inf = st.clone().for_inference();
    assert_eq!(
        inf.tensors[&names[0]],
        st.tensors[&format!("ema/{}", names[0])]
    );
    assert!(!inf.has_ema());
    model.swap_ema().unwrap();
    model.swap_ema().unwrap();
    assert_eq!(model.state(), st);
}

/// The digits pipeline of `predict_digits.toml` (30 test images a class) training for
/// `epochs` with these lines in place of its optimizer and lr.
fn digits_pipeline(root: &std::path::Path, name: &str, epochs: usize, recipe: &str) -> String {
    let text = fill(
        include_str!("manifests/predict_digits.toml"),
        &[("root", &root.display())],
    );
    let text = text
        .replace("name = \"dg\"", &format!("name = \"{name}\""))
        .replace("epochs = 20", &format!("epochs = {epochs}"))
        .replace("test_per_class = 10", "test_per_class = 30");
    assert!(text.contains("optimizer = \"adam\"\nlr = 0.005\n"));
    text.replace("optimizer = \"adam\"\nlr = 0.005\n", recipe)
}

/// The modern recipe: AdamW, cosine with a one-epoch warmup, label smoothing, a moving
/// average and cutout (2x2 of the 8x8 digits).
const MODERN: &str = "optimizer = \"adamw\"\nweight_decay = 0.01\nlr = 0.01\nschedule = \"cosine\"\nwarmup_epochs = 1\nlabel_smoothing = 0.1\nema = { decay = 0.99 }\naugment = { cutout = { size = 2 } }\n";

/// The plain recipe at the same peak lr: Adam, constant.
const PLAIN: &str = "optimizer = \"adam\"\nlr = 0.01\n";

#[test]
fn on_real_digits_the_modern_recipe_learns_at_least_as_well_as_the_plain_one() {
    let p = Project::new();
    let root = p.path().join("digits");
    digits(&root, 1797);
    let epochs = 8;
    p.manifest(
        "plain.toml",
        &digits_pipeline(&root, "plain", epochs, PLAIN),
    );
    p.manifest(
        "modern.toml",
        &digits_pipeline(&root, "modern", epochs, MODERN),
    );
    let rank1 = |name: &str| -> f64 {
        let r = p.run_json(name, &[]);
        let m: serde_json::Value = read_json(&p.artifact(&r, "evaluate").join("metrics.json"));
        m["rank"]["rank-1"].as_f64().unwrap()
    };
    let (plain, modern) = (rank1("plain"), rank1("modern"));
    eprintln!(
        "rank-1 on 300 held-out digits after {epochs} epochs: plain {plain}, modern {modern}"
    );
    assert!(modern >= plain, "modern {modern} < plain {plain}");
    assert!(modern >= 0.95, "{modern}");
    // Its history has the moving average's validation beside the weights'.
    let r = p.run_json("modern", &[]);
    let h: Vec<serde_json::Value> = read_json(&p.artifact(&r, "train").join("history.json"));
    assert_eq!(h.len(), epochs);
    for e in &h {
        assert!(e["ema_val_acc"].as_f64().is_some() && e["val_acc"].as_f64().is_some());
    }
    // Per step: the first epoch warms up from lr/100, the last ends near 0.
    let lr = |i: usize| h[i]["lr"].as_f64().unwrap();
    assert!((lr(0) - 1e-4).abs() < 1e-12, "{}", lr(0));
    assert!(lr(1) > lr(epochs - 1) && lr(epochs - 1) < 1e-3);
}

/// A pipeline with two trainings on generated data that between them use every new
/// feature: AdamW, cosine with warmup, label smoothing, mixup and CutMix, cutout and a
/// moving average; and SGD with decoupled decay on one-cycle, then an lr drop on cosine.
fn every_feature() -> String {
    let base = Generated::new("r")
        .val_per_class(4)
        .epochs(3)
        .checkpoints()
        .text();
    let train = "[stages.train]\ninput = \"hdf5\"\nnetwork = \"tiny\"\nepochs = 3\nbatch_size = 8\nlr = 0.01\n";
    assert!(base.contains(train), "{base}");
    base.replace(
        train,
        &format!(
            "{}optimizer = \"adamw\"\nschedule = \"cosine\"\nwarmup_epochs = 1\nlabel_smoothing = 0.1\nmixup = {{ alpha = 0.4 }}\ncutmix = {{ alpha = 1.0 }}\nema = {{ decay = 0.9 }}\naugment = {{ flip = true, cutout = {{ size = 6 }} }}\n",
            train.replace("lr = 0.01\n", "lr = 0.003\n")
        ),
    ) + "\n[stages.sgdw]\nkind = \"train\"\ninput = \"hdf5\"\nnetwork = \"tiny\"\nepochs = 3\nbatch_size = 8\nlr = 0.05\ncheckpoint_every = 1\ndecoupled_weight_decay = true\nweight_decay = 5e-4\nschedule = \"onecycle\"\npct_start = 0.4\n"
        + "\n[stages.drop]\nkind = \"lr-drop\"\nfrom = \"sgdw\"\nlr = 0.01\nepochs = 2\nschedule = \"cosine\"\nmin_lr = 1e-4\n"
        + "\n[stages.evaluate]\ninput = \"train\"\nsplit = \"val\"\ntop_k = [1, 2]\ntta = \"flip\"\n"
}

fn hashes(p: &Project, threads: &str) -> Vec<(String, String)> {
    let out = p
        .cmd(&["run", "r", "--json"])
        .env("RAYON_NUM_THREADS", threads)
        .output()
        .unwrap();
    assert_success(&out, "run r");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    ["train", "sgdw", "drop"]
        .iter()
        .map(|s| (s.to_string(), field(&r, s, "output")))
        .collect()
}

#[test]
fn every_new_feature_gives_the_same_artifact_on_one_or_two_threads_and_after_a_kill() {
    let one = Project::with("r.toml", &every_feature());
    let two = Project::with("r.toml", &every_feature());
    let a = hashes(&one, "1");
    let b = hashes(&two, "2");
    assert_eq!(a, b, "one thread and two");
    assert!(a.iter().all(|(_, h)| !h.is_empty()), "{a:?}");
    // Killed in the middle of each training, then run again: the same artifacts.
    for fault in ["train:epoch2", "sgdw:epoch2"] {
        let p = Project::with("r.toml", &every_feature());
        kill_at_fault(&p, &["run", "r"], fault);
        let out = p.cmd(&["run", "r", "--json"]).output().unwrap();
        assert_success(&out, "resumed run");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("resuming from its checkpoint at epoch 2"),
            "{said}"
        );
        assert_eq!(hashes(&p, "2"), a, "after a kill at {fault}");
    }
    // The moving average is what is evaluated and exported: the weights file holds it.
    let r = one.run_json("r", &[]);
    let dir = one.artifact(&r, "train");
    let full = pipe::data::checkpoint::load(&dir.join("state.safetensors"))
        .unwrap()
        .0;
    let served = pipe::data::checkpoint::load(&dir.join("model.safetensors"))
        .unwrap()
        .0;
    let kernel = full
        .tensors
        .keys()
        .find(|k| k.ends_with("/kernel") && !k.starts_with("ema/") && !k.starts_with("opt/"))
        .unwrap()
        .clone();
    assert_eq!(
        served.tensors[&kernel],
        full.tensors[&format!("ema/{kernel}")]
    );
    assert_ne!(served.tensors[&kernel], full.tensors[&kernel]);
}

#[test]
fn an_lr_drop_to_dfdx_of_a_model_with_a_moving_average_is_refused_before_it_trains() {
    let text = Generated::new("r")
        .drop("0.001", 1)
        .text()
        .replacen("lr = 0.01\n", "lr = 0.01\nema = { decay = 0.9 }\n", 1)
        .replace("epochs = 1\n", "epochs = 1\nbackend = \"dfdx\"\n");
    let p = Project::with("r.toml", &text);
    let err = p.fails(&["run", "r"]);
    assert!(
        err.contains("stage `drop` continues a model trained with ema on the dfdx backend"),
        "{err}"
    );
    // The native training before it ran and is kept.
    let out = p.ok(&["status", "r"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("train"));
}

/// With `ema`, `val.acc` and `val.loss` are the moving average's wherever they are read:
/// the journal's record, and `pipe diff` between a run and its own unchanged pipeline (no
/// difference: one side read from the record, the other as `pipe show` reads it).
#[test]
fn the_moving_averages_validation_is_the_runs_val_acc_everywhere() {
    let text = Generated::new("r").text().replacen(
        "lr = 0.01\n",
        "lr = 0.01\nema = { decay = 0.999 }\n",
        1,
    );
    let p = Project::with("r.toml", &text);
    p.run_json("r", &[]);
    let runs = p.ok_json(&["runs", "--json"]);
    let m = &runs[0]["metrics"];
    let ema = m["train.ema_val_acc"].as_f64().unwrap();
    assert_ne!(m["train.ema_val_loss"], m["train.val_loss"], "{m}");
    assert_eq!(m["val.acc"].as_f64(), Some(ema), "{m}");
    assert_eq!(m["val.loss"], m["train.ema_val_loss"], "{m}");
    for args in [
        &["diff", "r~0", "r", "--json"][..],
        &["diff", "r", "--json"],
    ] {
        let d = p.ok_json(args);
        let val: Vec<&serde_json::Value> = d["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m[0].as_str().is_some_and(|k| k.starts_with("val.")))
            .collect();
        assert_eq!(val.len(), 2, "{args:?}: {d}");
        for m in val {
            assert!(m[1].is_number() && m[1] == m[2], "{args:?}: {m}");
        }
    }
}
