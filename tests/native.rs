//! The native backend: finite-difference checks of every op's backward (f64), whole-network
//! parity with the dfdx backend (same state, same batch, one SGD and one Adam step), and
//! checkpoints moving between the two backends.

mod common;

use common::gradcheck::*;
use common::{assert_success, repo_file, Project};
use pipe::backend::dfdx_backend::cpu_net;
use pipe::backend::native::{NativeModel, NativeNet};
use pipe::backend::{self, BackendKind, DeviceKind, Model, Optimizer, State};
use pipe::manifest;
use pipe::nn::graph::Graph;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A network from a shipped network file, with text replacements applied first.
fn shipped(file: &str, network: &str, edits: &[(&str, &str)]) -> Graph {
    let p = Project::new();
    let mut text = repo_file(file);
    for (a, b) in edits {
        assert!(text.contains(a), "{file} has no `{a}`");
        text = text.replace(a, b);
    }
    if !text.contains("[stages.") {
        text.push_str("\n[stages.ingest]\nformat = \"synthetic\"\n");
    }
    let path = p.manifest("n.toml", &text);
    let m = manifest::load(&path, &[], p.path()).unwrap_or_else(|e| panic!("{e}"));
    pipe::nn::expand(&m.library, network, None).unwrap().graph
}

impl Differentiable for NativeNet<f64> {
    fn params(&mut self) -> &mut Vec<Vec<f64>> {
        &mut self.params
    }
    fn names(&self) -> Vec<String> {
        self.param_names()
    }
    fn train_loss(&mut self, x: &[f64], labels: &[i64]) -> f64 {
        self.loss(x, labels, 7).unwrap()
    }
    fn train_gradients(&mut self, x: &[f64], labels: &[i64]) -> Vec<Vec<f64>> {
        self.loss_and_grads(x, labels, 7).unwrap().3
    }
}

/// The native backend's analytic gradients against central differences on 8 entries of
/// every parameter.
fn gradcheck(g: &Graph, n: usize, seed: u64) {
    check_gradients(&mut NativeNet::<f64>::new(g, seed).unwrap(), g, n, seed, 8);
}

// The checks of the networks that the dfdx backend (tests/backend.rs) is checked on too.
shared_gradchecks!(gradcheck:
    native_gradcheck_conv_same_maxpool_and_dense,
    native_gradcheck_strided_valid_conv_batchnorm_relu_global_pool,
    native_gradcheck_pointwise_conv_elu_maxpool_same_and_l2,
    native_gradcheck_branch_used_three_times_concat_and_add
);

#[test]
fn native_gradcheck_5x5_same_avgpool_same_dropout_and_explicit_padding() {
    let g = network(
        "{ conv2d = { filters = 3, kernel = [3, 2], padding = 1 } },\n{ conv2d = { filters = 2, kernel = 5 } },\n{ avgpool = { size = 3, stride = 1, padding = \"same\" } },\n{ dropout = 0.5 },\n{ avgpool = { size = 2 } },\n{ flatten = {} },\n{ dense = \"$classes\" },\n{ softmax = {} },",
        "[6, 5, 2]",
    );
    gradcheck(&g, 3, 4);
}

#[test]
fn max_pools_over_overlapping_pools_count_a_tied_source_once() {
    // A 3x3/1 max pool over a 3x3/2 max pool's output sees the same source value in
    // neighbouring taps; finite differences say the source's gradient is counted once.
    let g = network(
        "{ conv2d = { filters = 2, kernel = 1 } },\n{ maxpool = { size = 3, stride = 2, padding = \"same\" } },\n{ maxpool = { size = 3, stride = 1, padding = \"same\" } },\n{ flatten = {} },\n{ dense = \"$classes\" },\n{ softmax = {} },",
        "[8, 8, 2]",
    );
    gradcheck(&g, 2, 12);
    // dfdx (weighting ties) agrees with native (first tap) in f64.
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let x: Vec<f64> = (0..2 * 128).map(|_| rng.random_range(-1.0..1.0)).collect();
    let (_, la, _, ga) = NativeNet::<f64>::new(&g, 1)
        .unwrap()
        .loss_and_grads(&x, &[0, 1], 0)
        .unwrap();
    let (_, lb, _, gb, _) = cpu_net::<f64>(&g, 1)
        .unwrap()
        .loss_and_grads(x, &[0, 1], 0)
        .unwrap();
    assert!((la - lb).abs() < 1e-12);
    for (u, v) in ga.iter().zip(&gb) {
        for (s, t) in u.iter().zip(v) {
            assert!((s - t).abs() < 1e-10 * (1.0 + t.abs()), "{s} vs {t}");
        }
    }
}

#[test]
fn native_gradcheck_inception_concat_written_in_place_feeding_three_readers() {
    // Branches write straight into the concat (b1 through an in-place relu); the concat is
    // read by three layers, so its gradient is accumulated from three writers.
    let g = network(
        r#"{ name = "b1", conv2d = { filters = 2, kernel = 1 } },
{ name = "bn1", batchnorm = {} },
{ name = "r1", relu = {} },
{ name = "b2", conv2d = { filters = 3, kernel = 3 }, inputs = ["input"] },
{ name = "cat", concat = {}, inputs = ["r1", "b2"] },
{ name = "x", conv2d = { filters = 2, kernel = 1 }, inputs = ["cat"] },
{ name = "y", conv2d = { filters = 2, kernel = 3 }, inputs = ["cat"] },
{ name = "z", avgpool = { size = 3, stride = 1, padding = "same" }, inputs = ["cat"] },
{ name = "cat2", concat = {}, inputs = ["x", "y", "z"] },
{ global_avgpool = {} },
{ dense = "$classes" },
{ softmax = {} },"#,
        "[5, 5, 2]",
    );
    gradcheck(&g, 3, 8);
}

#[test]
fn native_gradcheck_flat_batchnorm_and_mid_network_softmax() {
    let g = network(
        "{ flatten = {} },\n{ dense = 5 },\n{ batchnorm = {} },\n{ relu = {} },\n{ dense = 4 },\n{ softmax = {} },\n{ dense = \"$classes\" },\n{ softmax = {} },",
        "[3, 3, 2]",
    );
    gradcheck(&g, 4, 6);
}

/// Largest |a - b| over a tensor, relative to the tensor's largest |a| (or to 1e-3: a conv
/// bias before batch norm has a gradient of exactly zero in exact arithmetic, so after a
/// step it holds f32 rounding noise of ~1e-9 that no two summation orders share).
fn rel_diff(a: &[f32], b: &[f32]) -> f64 {
    let scale = a.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-3);
    let diff = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()));
    diff / scale
}

fn assert_states_close(a: &State, b: &State, tol: f64, what: &str) {
    assert_eq!(a.step, b.step);
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>(),
        "{what}: the backends name their tensors differently"
    );
    let mut bad = Vec::new();
    for (k, t) in &a.tensors {
        if k.contains("conv") && (k.ends_with("/bias") || k.contains("/bias/")) {
            // Every conv in these networks feeds a batch norm: its bias gradient is zero in
            // exact arithmetic and rounding noise (~1e-9) in f32, different in each backend.
            continue;
        }
        let d = rel_diff(&t.data, &b.tensors[k].data);
        let scale = t.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        if d > tol {
            bad.push(format!("{k}: {d:e} (scale {scale:e})"));
        }
    }
    assert!(
        bad.is_empty(),
        "{what}: {} of {} tensors differ by more than {tol:e}:\n{}",
        bad.len(),
        a.tensors.len(),
        bad.join("\n")
    );
}

/// One SGD step and one Adam step from the same weights on the same batch, on native and
/// dfdx: losses within 1e-5 (relative), every tensor of the state within 1e-4.
fn parity(g: &Graph, n: usize, classes: i64, tol: f64) {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let x: Vec<f32> = (0..n * input_len(g))
        .map(|_| rng.random_range(0.0f32..1.0))
        .collect();
    let y: Vec<i64> = (0..n as i64).map(|i| i % classes).collect();
    let sgd = Optimizer::Sgd {
        momentum: 0.9,
        nesterov: true,
        weight_decay: 0.0,
    };
    let adam = Optimizer::Adam {
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-7,
    };
    let mut native = backend::build_with(g, 5, DeviceKind::Cpu, BackendKind::Native).unwrap();
    let mut dfdx = backend::build_with(g, 5, DeviceKind::Cpu, BackendKind::Dfdx).unwrap();
    assert_states_close(&dfdx.state(), &native.state(), 0.0, "initial weights");
    for (s, opt) in [(1u64, &sgd), (2, &adam)] {
        if s == 2 {
            // Adam from the initial weights (its moments are not SGD's velocity).
            native = backend::build_with(g, 5, DeviceKind::Cpu, BackendKind::Native).unwrap();
            dfdx = backend::build_with(g, 5, DeviceKind::Cpu, BackendKind::Dfdx).unwrap();
        }
        let a = native.train_step(&x, &y, opt, 1e-2, s).unwrap();
        let b = dfdx.train_step(&x, &y, opt, 1e-2, s).unwrap();
        let rel = (a.loss - b.loss).abs() / b.loss.abs();
        assert!(
            rel < 1e-5,
            "step {s}: loss native {} dfdx {} (relative {rel:e})",
            a.loss,
            b.loss
        );
        if s == 1 {
            assert_states_close(&dfdx.state(), &native.state(), tol, "after the SGD step");
        } else {
            // Adam divides by sqrt(v): an element whose gradient is rounding noise (a conv
            // bias before batch norm has a gradient of exactly zero) moves by +-lr in either
            // backend's own direction. So: 99 % of the values within `tol`, and none
            // further apart than two steps of 1e-2.
            let (sa, sb) = (native.state(), dfdx.state());
            let (mut total, mut off) = (0usize, 0usize);
            for (k, t) in &sb.tensors {
                let scale = t.data.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                for (u, v) in sa.tensors[k].data.iter().zip(&t.data) {
                    let d = (u - v).abs();
                    assert!(d <= 2e-2 + tol as f32 * scale, "{k}: {u} vs {v} after Adam");
                    total += 1;
                    off += (d > tol as f32 * scale) as usize;
                }
            }
            assert!(
                off as f64 <= 1e-2 * total as f64,
                "after the Adam step {off} of {total} values differ by more than {tol:e}"
            );
        }
    }
    let pa = native.predict(&x, n).unwrap();
    let pb = dfdx.predict(&x, n).unwrap();
    // After the Adam step (see above) the probabilities agree to 1e-2.
    assert!(rel_diff(&pb, &pa) < 1e-2, "predictions differ");
}

#[test]
fn parity_with_dfdx_demo_network() {
    let g = shipped("pipelines/demo.toml", "demo_net", &[]);
    parity(&g, 6, 10, 1e-4);
}

#[test]
fn parity_with_dfdx_minigooglenet() {
    let g = shipped(
        "pipelines/networks/mini_googlenet.toml",
        "mini_googlenet",
        &[],
    );
    parity(&g, 4, 10, 1e-4);
}

fn small_net() -> Graph {
    network(
        "{ conv2d = { filters = 4, kernel = 3, bias = false } },\n{ batchnorm = {} },\n{ relu = {} },\n{ maxpool = { size = 2 } },\n{ conv2d = { filters = 6, kernel = 1 } },\n{ global_avgpool = {} },\n{ dropout = 0.2 },\n{ dense = \"$classes\" },\n{ softmax = {} },",
        "[8, 8, 3]",
    )
}

/// A state written by one backend loads into the other, and the next steps agree.
fn state_moves(from: BackendKind, to: BackendKind) {
    let g = small_net();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let x: Vec<f32> = (0..6 * 8 * 8 * 3)
        .map(|_| rng.random_range(0.0f32..1.0))
        .collect();
    let y = [0, 1, 2, 0, 1, 2];
    let opt = Optimizer::Adam {
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-7,
    };
    let mut a = backend::build_with(&g, 1, DeviceKind::Cpu, from).unwrap();
    for s in 0..3 {
        a.train_step(&x, &y, &opt, 1e-2, s).unwrap();
    }
    let saved = a.state();
    let mut b = backend::build_with(&g, 99, DeviceKind::Cpu, to).unwrap();
    b.load_state(&saved).unwrap();
    assert_eq!(
        b.state(),
        saved,
        "{to} does not restore {from}'s state exactly"
    );
    for s in 3..5 {
        let la = a.train_step(&x, &y, &opt, 1e-2, s).unwrap().loss;
        let lb = b.train_step(&x, &y, &opt, 1e-2, s).unwrap().loss;
        assert!((la - lb).abs() / la.abs() < 1e-5, "step {s}: {la} vs {lb}");
    }
    assert_states_close(&a.state(), &b.state(), 1e-4, "two steps after the move");
}

#[test]
fn a_dfdx_state_resumes_on_native() {
    state_moves(BackendKind::Dfdx, BackendKind::Native);
}

#[test]
fn a_native_state_resumes_on_dfdx() {
    state_moves(BackendKind::Native, BackendKind::Dfdx);
}

#[test]
fn native_steps_are_bit_identical_across_thread_counts() {
    let g = shipped(
        "pipelines/networks/mini_googlenet.toml",
        "mini_googlenet",
        &[],
    );
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let x: Vec<f32> = (0..5 * 32 * 32 * 3)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let y = [0, 1, 2, 3, 4];
    let opt = Optimizer::Sgd {
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
    };
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut m = NativeModel::new(&g, 2).unwrap();
            for s in 0..2 {
                m.train_step(&x, &y, &opt, 1e-2, s).unwrap();
            }
            m.state()
        })
    };
    let one = run(1);
    assert_eq!(run(3), one, "3 threads differ from 1");
    assert_eq!(run(2), one, "2 threads differ from 1");
}

#[test]
fn native_cpu_net_matches_dfdx_loss_in_f64() {
    // The f64 cores of both backends on a network with every kind of op: the same loss to
    // 1e-10 (only summation order differs).
    let g = network(
        r#"{ name = "a", conv2d = { filters = 4, kernel = 3 } },
{ name = "b", conv2d = { filters = 2, kernel = 1 }, inputs = ["a"] },
{ name = "c", maxpool = { size = 3, stride = 1, padding = "same" }, inputs = ["a"] },
{ name = "d", concat = {}, inputs = ["b", "c"] },
{ name = "e", conv2d = { filters = 4, kernel = 3, l2 = 0.01 } },
{ name = "f", add = {}, inputs = ["e", "a"] },
{ batchnorm = {} },
{ elu = {} },
{ avgpool = { size = 2, padding = "same" } },
{ dropout = 0.3 },
{ flatten = {} },
{ dense = "$classes" },
{ softmax = {} },"#,
        "[5, 5, 2]",
    );
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let x: Vec<f64> = (0..4 * 50).map(|_| rng.random_range(-1.0..1.0)).collect();
    let y = [0, 1, 2, 1];
    let mut a = NativeNet::<f64>::new(&g, 1).unwrap();
    let mut b = cpu_net::<f64>(&g, 1).unwrap();
    let (ce_a, tot_a, _, ga) = a.loss_and_grads(&x, &y, 5).unwrap();
    let (ce_b, tot_b, _, gb, _) = b.loss_and_grads(x.clone(), &y, 5).unwrap();
    assert!((ce_a - ce_b).abs() < 1e-10 * ce_b.abs(), "{ce_a} vs {ce_b}");
    assert!((tot_a - tot_b).abs() < 1e-10 * tot_b.abs());
    for (p, (u, v)) in ga.iter().zip(&gb).enumerate() {
        for (s, t) in u.iter().zip(v) {
            assert!(
                (s - t).abs() < 1e-9 * (1.0 + t.abs()),
                "param {p}: {s} vs {t}"
            );
        }
    }
}

/// The f64 cores of both backends: the same loss and gradients to ~1e-9 (only summation
/// order differs), with no f32 rounding to blur a difference in the math.
fn parity_f64(g: &Graph, n: usize, classes: i64) {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let x: Vec<f64> = (0..n * input_len(g))
        .map(|_| rng.random_range(0.0..1.0))
        .collect();
    let y: Vec<i64> = (0..n as i64).map(|i| i % classes).collect();
    let mut a = NativeNet::<f64>::new(g, 3).unwrap();
    let mut b = cpu_net::<f64>(g, 3).unwrap();
    let (ce_a, tot_a, _, ga) = a.loss_and_grads(&x, &y, 4).unwrap();
    let (ce_b, tot_b, _, gb, _) = b.loss_and_grads(x.clone(), &y, 4).unwrap();
    assert!(
        (ce_a - ce_b).abs() < 1e-10 * ce_b.abs(),
        "loss {ce_a} vs {ce_b}"
    );
    assert!((tot_a - tot_b).abs() < 1e-10 * tot_b.abs());
    let names = a.param_names();
    for (p, (u, v)) in ga.iter().zip(&gb).enumerate() {
        let scale = v.iter().fold(1e-3f64, |m, t| m.max(t.abs()));
        let d = u.iter().zip(v).fold(0f64, |m, (s, t)| m.max((s - t).abs()));
        assert!(
            d < 1e-8 * scale,
            "{}: gradients differ by {:e} (relative)",
            names[p],
            d / scale
        );
    }
}

#[test]
fn parity_f64_with_dfdx_deepergooglenet_at_32x32() {
    let g = shipped(
        "pipelines/networks/deeper_googlenet.toml",
        "deeper_googlenet",
        &[
            ("input = [64, 64, 3]", "input = [32, 32, 3]"),
            ("avgpool = { size = 4 }", "avgpool = { size = 2 }"),
        ],
    );
    parity_f64(&g, 2, 200);
}

#[test]
fn native_f32_matches_the_f64_reference_on_deepergooglenet() {
    // Native in f32 against native in f64 (which agrees with dfdx in f64 to 1e-8, above):
    // the loss to 1e-6 and the gradient reaching every node's input to 1e-4.
    let g = shipped(
        "pipelines/networks/deeper_googlenet.toml",
        "deeper_googlenet",
        &[
            ("input = [64, 64, 3]", "input = [32, 32, 3]"),
            ("avgpool = { size = 4 }", "avgpool = { size = 2 }"),
        ],
    );
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let n = 3;
    let x: Vec<f32> = (0..n * input_len(&g))
        .map(|_| rng.random_range(0.0f32..1.0))
        .collect();
    let x64: Vec<f64> = x.iter().map(|v| *v as f64).collect();
    let y: Vec<i64> = (0..n as i64).collect();
    let mut a = NativeNet::<f32>::new(&g, 5).unwrap();
    a.snapshots = Some(Vec::new());
    let (la, _, _, ga) = a.loss_and_grads(&x, &y, 1).unwrap();
    let mut b = NativeNet::<f64>::new(&g, 5).unwrap();
    b.snapshots = Some(Vec::new());
    let (lb, _, _, gb) = b.loss_and_grads(&x64, &y, 1).unwrap();
    assert!((la - lb).abs() < 1e-6 * lb, "loss {la} vs {lb}");
    let snaps = a.snapshots.take().unwrap();
    assert!(snaps.len() > 100, "every node's backward ran");
    for ((i, u), (_, v)) in snaps.iter().zip(b.snapshots.as_ref().unwrap()) {
        let s = v.iter().fold(1e-3f64, |m, t| m.max(t.abs()));
        let e = u
            .iter()
            .zip(v)
            .fold(0f64, |m, (p, q)| m.max((*p as f64 - q).abs()))
            / s;
        assert!(
            e < 1e-4,
            "{}: input gradient differs by {e:e}",
            g.nodes[*i].name
        );
    }
    let names = a.param_names();
    for (p, (u, v)) in ga.iter().zip(&gb).enumerate() {
        if names[p].ends_with("conv/bias") {
            continue; // before batch norm: zero in exact arithmetic, rounding noise here
        }
        let s = v.iter().fold(1e-3f64, |m, t| m.max(t.abs()));
        let e = u
            .iter()
            .zip(v)
            .fold(0f64, |m, (p, q)| m.max((*p as f64 - q).abs()))
            / s;
        assert!(e < 1e-4, "{}: gradient differs by {e:e}", names[p]);
    }
}

#[test]
fn bench_step_reports_images_per_second_and_peak_memory() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args([
            "bench",
            "step",
            "--network",
            "demo",
            "--backend",
            "native",
            "--batch",
            "4",
            "--steps",
            "2",
        ])
        .output()
        .unwrap();
    assert_success(&out, "pipe bench step");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["images_per_sec"].as_f64().unwrap() > 0.0);
    let rss = v["peak_rss_mb"].as_f64().unwrap();
    assert!(rss > 1.0 && rss < 1000.0, "peak RSS {rss} MB");
}

/// Inference folds a batch norm into the conv before it (one pass: conv, normalisation
/// with the running statistics, relu). From the same trained state (running statistics
/// away from their initial 0 and 1), native's folded outputs equal dfdx's unfolded ones:
/// MiniGoogLeNet (1x1 and 3x3 convs, each followed by batch norm and relu), and a network
/// with a conv without bias, a batch norm without relu, one with elu, a 1x1 conv whose
/// output two nodes read (not folded) and a batch norm after a non-conv.
#[test]
fn folded_inference_equals_dfdx() {
    let mini = shipped(
        "pipelines/networks/mini_googlenet.toml",
        "mini_googlenet",
        &[],
    );
    let mixed = network(
        "{ name = \"a\", conv2d = { filters = 5, kernel = 3, bias = false } },\n{ batchnorm = {} },\n{ name = \"b\", conv2d = { filters = 6, kernel = 1 } },\n{ name = \"bn\", batchnorm = {} },\n{ elu = {} },\n{ name = \"p\", conv2d = { filters = 6, kernel = 1 } },\n{ name = \"q\", batchnorm = {} },\n{ name = \"r\", relu = {}, inputs = [\"p\"] },\n{ name = \"s\", add = {}, inputs = [\"q\", \"r\"] },\n{ maxpool = { size = 2 } },\n{ batchnorm = {} },\n{ relu = {} },\n{ global_avgpool = {} },\n{ dense = \"$classes\" },",
        "[8, 8, 3]",
    );
    for (name, g, side) in [("mini", &mini, 32), ("mixed", &mixed, 8)] {
        let n = 6;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let x: Vec<f32> = (0..n * side * side * 3)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let classes = g.infer().unwrap().last().unwrap().shape.numel();
        let y: Vec<i64> = (0..n as i64).map(|i| i % classes as i64).collect();
        let mut native = backend::build_with(g, 1, DeviceKind::Cpu, BackendKind::Native).unwrap();
        let sgd = Optimizer::Sgd {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        };
        for s in 1..=3 {
            native.train_step(&x, &y, &sgd, 5e-2, s).unwrap();
        }
        // Running statistics (and gammas, betas) away from their initial values.
        let mut state = native.state();
        for (k, t) in state.tensors.iter_mut() {
            let (lo, hi) = match k.rsplit('/').next().unwrap() {
                "moving_mean" | "beta" => (-0.5, 0.5),
                "moving_variance" | "gamma" => (0.3, 2.0),
                _ => continue,
            };
            t.data
                .iter_mut()
                .for_each(|v| *v = rng.random_range(lo..hi));
        }
        native.load_state(&state).unwrap();
        let mut dfdx = backend::build_with(g, 2, DeviceKind::Cpu, BackendKind::Dfdx).unwrap();
        dfdx.load_state(&state).unwrap();
        let (pa, pb) = (native.predict(&x, n).unwrap(), dfdx.predict(&x, n).unwrap());
        let d = rel_diff(&pb, &pa);
        assert!(
            d < 1e-5,
            "{name}: folded inference differs from dfdx by {d:e}"
        );
    }
}

/// Conv -> relu -> batch norm and conv -> elu -> batch norm (conv_module's
/// `bn_first = false`): the batch norm's input gradient is planned in place over its
/// output gradient, and the activation's and the conv's with it.
#[test]
fn native_gradcheck_activation_before_batchnorm() {
    let g = network(
        "{ conv2d = { filters = 8, kernel = 3 } },\n{ relu = {} },\n{ batchnorm = {} },\n{ conv2d = { filters = 8, kernel = 3 } },\n{ elu = {} },\n{ batchnorm = {} },\n{ global_avgpool = {} },\n{ dense = \"$classes\" },\n{ softmax = {} },",
        "[6, 5, 3]",
    );
    gradcheck(&g, 2, 5);
}

/// Winograd F(2x2, 3x3) (3x3 `same` stride-1 convs with 8 or more channels each way):
/// forward, input gradient (the turned kernel) and weight gradient (F(3x3, 2x2)) against
/// finite differences in f64, on odd and even sizes (tiles that leave the image), with a
/// batch norm and relu after it and a second Winograd conv reading the first.
#[test]
fn native_gradcheck_winograd_convs_on_odd_and_even_sizes() {
    for input in ["[5, 6, 3]", "[4, 4, 3]"] {
        let g = network(
            "{ conv2d = { filters = 8, kernel = 1 } },\n{ conv2d = { filters = 9, kernel = 3 } },\n{ batchnorm = {} },\n{ relu = {} },\n{ conv2d = { filters = 8, kernel = 3, bias = false } },\n{ global_avgpool = {} },\n{ dense = \"$classes\" },\n{ softmax = {} },",
            input,
        );
        gradcheck(&g, 2, 7);
    }
}

/// Every (output pixel, tap, input pixel) of a 3x3 `same` stride-1 convolution over `n`
/// images of h x w, taps that fall outside the image left out: `f(out, ky*3 + kx, in)`
/// with pixels numbered `(b*h + y)*w + x`.
fn same_3x3_taps(n: usize, h: usize, w: usize, mut f: impl FnMut(usize, usize, usize)) {
    for b in 0..n {
        for oy in 0..h {
            for ox in 0..w {
                for ky in 0..3 {
                    for kx in 0..3 {
                        let (iy, ix) = ((oy + ky).wrapping_sub(1), (ox + kx).wrapping_sub(1));
                        if iy < h && ix < w {
                            f((b * h + oy) * w + ox, ky * 3 + kx, (b * h + iy) * w + ix);
                        }
                    }
                }
            }
        }
    }
}

/// A 3x3 `same` convolution computed by Winograd and by im2col, in f32, against the
/// direct sum in f64: the error of each, relative to the largest output, is printed
/// (docs/performance.md quotes it) and Winograd's stays within 1e-5; and the same for
/// the kernel gradient by Winograd's F(3x3, 2x2).
#[test]
fn winograd_error_against_the_direct_path() {
    use pipe::backend::native::cpu::conv::conv2d_forward_im2col;
    use pipe::backend::native::cpu::winograd;
    use pipe::backend::native::cpu::{Epilogue, Ptr, Workspaces};
    use pipe::backend::native::plan::View;
    use pipe::backend::native::shared::ConvGeom;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (n, h, w, cin, cout) in [
        (4, 32, 32, 96, 32),
        (3, 15, 15, 160, 80),
        (2, 7, 7, 336, 160),
    ] {
        let g = ConvGeom {
            h,
            w,
            cin,
            oh: h,
            ow: w,
            cout,
            kh: 3,
            kw: 3,
            sh: 1,
            sw: 1,
            pt: 1,
            pl: 1,
        };
        assert!(winograd::applies(&g));
        let x: Vec<f32> = (0..n * h * w * cin)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let k: Vec<f32> = (0..9 * cin * cout)
            .map(|_| rng.random_range(-0.1..0.1))
            .collect();
        let bias: Vec<f32> = (0..cout).map(|_| rng.random_range(-0.1..0.1)).collect();
        // The direct sum, in f64.
        let mut want = vec![0f64; n * h * w * cout];
        for o in want.chunks_mut(cout) {
            for (v, b) in o.iter_mut().zip(&bias) {
                *v = *b as f64;
            }
        }
        same_3x3_taps(n, h, w, |out, tap, inp| {
            let o = &mut want[out * cout..][..cout];
            for (ci, xv) in x[inp * cin..][..cin].iter().enumerate() {
                let kr = &k[(tap * cin + ci) * cout..][..cout];
                for (v, kv) in o.iter_mut().zip(kr) {
                    *v += *xv as f64 * *kv as f64;
                }
            }
        });
        let xv = View {
            off: 0,
            ld: cin,
            c: cin,
            hw: h * w,
        };
        let yv = View {
            off: 0,
            ld: cout,
            c: cout,
            hw: h * w,
        };
        let ws = Workspaces::<f32>::default();
        let epi = Epilogue {
            bias: Some(&bias),
            relu: false,
        };
        let mut xs = x.clone();
        let mut direct = vec![0f32; n * h * w * cout];
        // SAFETY: whole buffers of these shapes; x and y are distinct.
        unsafe {
            conv2d_forward_im2col(
                Ptr(xs.as_mut_ptr()),
                xv,
                &k,
                epi,
                Ptr(direct.as_mut_ptr()),
                yv,
                &g,
                n,
                &ws,
            )
        };
        let mut u = vec![0f32; winograd::kernel_len(&g)];
        winograd::winograd_kernel(&k, cin, cout, false, &mut u, &ws);
        let mut wino = vec![0f32; n * h * w * cout];
        // SAFETY: whole buffers of these shapes; x and y are distinct.
        unsafe {
            winograd::winograd_conv2d(
                Ptr(xs.as_mut_ptr()),
                xv,
                &u,
                (cin, cout),
                (h, w),
                Ptr(wino.as_mut_ptr()),
                yv,
                (0, n),
                epi,
                false,
                &ws,
            )
        };
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        let err = |y: &[f32]| {
            y.iter()
                .zip(&want)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0f64, f64::max)
                / scale
        };
        let (e_direct, e_wino) = (err(&direct), err(&wino));
        println!(
            "{n}x{h}x{w}x{cin} -> {cout}: largest error relative to the largest output: im2col {e_direct:.2e}, Winograd {e_wino:.2e}"
        );
        assert!(e_wino < 1e-5, "Winograd error {e_wino:e}");
        assert!(e_direct < 1e-5, "im2col error {e_direct:e}");

        // The kernel gradient by F(3x3, 2x2) against the direct sum in f64, for an
        // output gradient dy of the same shape as y.
        let dy: Vec<f32> = (0..n * h * w * cout)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let mut want = vec![0f64; 9 * cin * cout];
        same_3x3_taps(n, h, w, |out, tap, inp| {
            let d = &dy[out * cout..][..cout];
            for (ci, xv) in x[inp * cin..][..cin].iter().enumerate() {
                let o = &mut want[(tap * cin + ci) * cout..][..cout];
                for (v, d) in o.iter_mut().zip(d) {
                    *v += *xv as f64 * *d as f64;
                }
            }
        });
        let mut dys = dy.clone();
        let mut dw = vec![0f32; 9 * cin * cout];
        let mut db = vec![f32::NAN; cout];
        // SAFETY: whole buffers of these shapes, only read.
        unsafe {
            winograd::winograd_kernel_grad(
                Ptr(xs.as_mut_ptr()),
                xv,
                Ptr(dys.as_mut_ptr()),
                yv,
                (cin, cout),
                (h, w),
                (0, n),
                &mut dw,
                &mut db,
                &ws,
            )
        };
        // The bias gradient, summed on the way: every pixel's dy once.
        for (co, got) in db.iter().enumerate() {
            let want: f64 = dy.iter().skip(co).step_by(cout).map(|v| *v as f64).sum();
            assert!(
                (*got as f64 - want).abs() < 1e-3,
                "bias gradient of channel {co}: {got} against {want}"
            );
        }
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        let e_grad = dw
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0f64, f64::max)
            / scale;
        println!(
            "{n}x{h}x{w}x{cin} -> {cout}: kernel gradient by Winograd F(3x3, 2x2), largest error relative to the largest value: {e_grad:.2e}"
        );
        assert!(e_grad < 1e-5, "Winograd kernel-gradient error {e_grad:e}");
    }
}

/// `PIPE_SIMD` caps our kernels (`avx2`, `baseline`) and `PIPE_WINOGRAD=0` turns Winograd
/// off; a value they do not know is an error naming the variable, not a silent default.
#[test]
fn simd_and_winograd_switches_run_and_refuse_unknown_values() {
    let step = |env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pipe"));
        cmd.args(["bench", "step", "--network", "demo", "--backend", "native"])
            .args(["--batch", "4", "--steps", "1"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    for env in [
        [("PIPE_SIMD", "avx2"), ("PIPE_WINOGRAD", "0")],
        [("PIPE_SIMD", "baseline"), ("PIPE_WINOGRAD", "1")],
    ] {
        let out = step(&env);
        assert_success(&out, &format!("{env:?}"));
    }
    let out = step(&[("PIPE_SIMD", "avx1024")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("PIPE_SIMD=avx1024"),
        "{err}"
    );
    let out = step(&[("PIPE_WINOGRAD", "yes")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("PIPE_WINOGRAD=yes"),
        "{err}"
    );
}
