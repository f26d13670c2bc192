//! The dfdx backend: finite-difference gradient checks of every op (f64), state round trip,
//! and a network that learns.

mod common;

use common::gradcheck::*;
use common::Project;
use pipe::backend::dfdx_backend::{cpu_net, CpuNet};
use pipe::backend::{self, Optimizer};
use pipe::manifest;
use pipe::nn::graph::Graph;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

impl Differentiable for CpuNet<f64> {
    fn params(&mut self) -> &mut Vec<Vec<f64>> {
        &mut self.params
    }
    fn names(&self) -> Vec<String> {
        self.param_names()
    }
    fn train_loss(&mut self, x: &[f64], labels: &[i64]) -> f64 {
        self.loss(x.to_vec(), labels, 7).unwrap()
    }
    fn train_gradients(&mut self, x: &[f64], labels: &[i64]) -> Vec<Vec<f64>> {
        self.loss_and_grads(x.to_vec(), labels, 7).unwrap().3
    }
}

/// dfdx's analytic gradients against central differences on 6 entries of every parameter.
fn gradcheck(g: &Graph, n: usize, seed: u64) {
    check_gradients(&mut cpu_net::<f64>(g, seed).unwrap(), g, n, seed, 6);
}

// The checks of the networks that the native backend (tests/native.rs) is checked on too.
shared_gradchecks!(gradcheck:
    gradcheck_conv_same_and_dense,
    gradcheck_strided_valid_conv_batchnorm_relu_global_pool,
    gradcheck_pointwise_conv_elu_maxpool_same_and_l2,
    gradcheck_branch_used_three_times_concat_and_add
);

#[test]
fn gradcheck_avgpool_same_dropout_and_explicit_padding() {
    let g = network(
        "{ conv2d = { filters = 3, kernel = [3, 2], padding = 1 } },\n{ avgpool = { size = 3, stride = 1, padding = \"same\" } },\n{ dropout = 0.5 },\n{ avgpool = { size = 2 } },\n{ flatten = {} },\n{ dense = \"$classes\" },\n{ softmax = {} },",
        "[6, 5, 2]",
    );
    gradcheck(&g, 3, 4);
}

#[test]
fn gradcheck_flat_batchnorm_between_dense_layers() {
    let g = network(
        "{ flatten = {} },\n{ dense = 5 },\n{ batchnorm = {} },\n{ relu = {} },\n{ dense = \"$classes\" },\n{ softmax = {} },",
        "[3, 3, 2]",
    );
    gradcheck(&g, 4, 6);
}

#[test]
fn state_round_trip_restores_every_tensor() {
    let g = network(
        "{ conv2d = { filters = 3, kernel = 3 } },\n{ batchnorm = {} },\n{ relu = {} },\n{ global_avgpool = {} },\n{ dense = \"$classes\" },\n{ softmax = {} },",
        "[6, 6, 3]",
    );
    let mut a = backend::build(&g, 1).unwrap();
    let x: Vec<f32> = (0..4 * 6 * 6 * 3)
        .map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0)
        .collect();
    let labels = [0, 1, 2, 1];
    let opt = Optimizer::Adam {
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-7,
    };
    for s in 0..3 {
        a.train_step(&x, &labels, &opt, 1e-2, s).unwrap();
    }
    let st = a.state();
    assert_eq!(st.step, 3);
    assert!(st.tensors.contains_key("batchnorm_1/moving_variance"));
    assert!(st.tensors.contains_key("opt/conv2d_1/kernel/v"));
    assert_eq!(st.tensors["conv2d_1/kernel"].shape, vec![3, 3, 3, 3]);
    let mut b = backend::build(&g, 99).unwrap();
    b.load_state(&st).unwrap();
    assert_eq!(b.state(), st);
    // Same state, same next step: identical results.
    let sa = a.train_step(&x, &labels, &opt, 1e-2, 10).unwrap();
    let sb = b.train_step(&x, &labels, &opt, 1e-2, 10).unwrap();
    assert_eq!(sa, sb);
    assert_eq!(a.state(), b.state());
    assert_eq!(a.predict(&x, 4).unwrap(), b.predict(&x, 4).unwrap());
}

#[test]
fn a_small_network_learns_generated_data() {
    let g = {
        let p = Project::new();
        let text = "[networks.n]\ninput = [16, 16, 3]\nclasses = 4\nlayers = [\n{ conv2d = { filters = 8, kernel = 3 } },\n{ batchnorm = {} },\n{ relu = {} },\n{ maxpool = { size = 2 } },\n{ conv2d = { filters = 16, kernel = 3 } },\n{ batchnorm = {} },\n{ relu = {} },\n{ global_avgpool = {} },\n{ dense = \"$classes\" },\n{ softmax = {} },\n]\n[stages.ingest]\nformat = \"synthetic\"\n";
        let path = p.manifest("g.toml", text);
        let m = manifest::load(&path, &[], p.path()).unwrap();
        pipe::nn::expand(&m.library, "n", None).unwrap().graph
    };
    let make = |count: usize, seed: u64| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for i in 0..count {
            let c = i % 4;
            let img = pipe::data::synthetic::synth_image(c, 4, 16, 16, &mut rng);
            xs.extend(img.as_raw().iter().map(|&b| b as f32 / 127.5 - 1.0));
            ys.push(c as i64);
        }
        (xs, ys)
    };
    let (train_x, train_y) = make(256, 1);
    let (test_x, test_y) = make(128, 2);
    let mut m = backend::build(&g, 3).unwrap();
    let opt = Optimizer::Adam {
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-7,
    };
    let px = 16 * 16 * 3;
    for epoch in 0..4u64 {
        for b in 0..8 {
            let xs = &train_x[b * 32 * px..(b + 1) * 32 * px];
            let ys = &train_y[b * 32..(b + 1) * 32];
            m.train_step(xs, ys, &opt, 1e-2, epoch * 100 + b as u64)
                .unwrap();
        }
    }
    let probs = m.predict(&test_x, 128).unwrap();
    let correct = (0..128)
        .filter(|&i| pipe::backend::argmax(&probs[i * 4..(i + 1) * 4]) == test_y[i] as usize)
        .count();
    assert!(correct as f64 / 128.0 > 0.9, "accuracy {correct}/128");
    // Probabilities sum to one.
    let s: f32 = probs[..4].iter().sum();
    assert!((s - 1.0).abs() < 1e-5);
}
