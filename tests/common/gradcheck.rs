//! Networks from a list of layers, and the finite-difference check of a backend's
//! gradients (f64) that tests/backend.rs (dfdx) and tests/native.rs (native) run, on
//! networks of their own and on the ones below that both check.

use pipe::nn::graph::Graph;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Project;

/// The graph of a network of 3 classes with these layers (the items of its `layers`
/// array) and this input (`[h, w, c]`).
pub fn network(layers: &str, input: &str) -> Graph {
    let p = Project::new();
    let text = format!(
        "[networks.n]\ninput = {input}\nclasses = 3\nlayers = [\n{layers}\n]\n\n[stages.ingest]\nformat = \"synthetic\"\n"
    );
    let path = p.manifest("g.toml", &text);
    let m = pipe::manifest::load(&path, &[], p.path()).unwrap_or_else(|e| panic!("{e}"));
    pipe::nn::expand(&m.library, "n", None).unwrap().graph
}

/// The values of one input of `g`.
pub fn input_len(g: &Graph) -> usize {
    g.infer().unwrap()[0].shape.numel()
}

/// A network of 3 classes for gradient checks: its layers and its input.
pub struct Net {
    pub layers: &'static str,
    pub input: &'static str,
}

impl Net {
    pub fn graph(&self) -> Graph {
        network(self.layers, self.input)
    }
}

/// A `same` conv, a max pool and a dense layer.
pub const CONV_SAME_MAXPOOL_DENSE: Net = Net {
    layers: "{ conv2d = { filters = 3, kernel = 3 } },\n{ maxpool = { size = 2 } },\n{ flatten = {} },\n{ dense = \"$classes\" },\n{ softmax = {} },",
    input: "[5, 5, 2]",
};

/// A strided `valid` conv on an uneven input, batch norm, relu, global average pooling.
pub const STRIDED_VALID_CONV_BATCHNORM_RELU_GLOBAL_POOL: Net = Net {
    layers: "{ conv2d = { filters = 4, kernel = 3, stride = 2, padding = \"valid\" } },\n{ batchnorm = {} },\n{ relu = {} },\n{ global_avgpool = {} },\n{ dense = \"$classes\" },\n{ softmax = {} },",
    input: "[7, 6, 2]",
};

/// A 1x1 conv and a dense layer with L2, elu, a strided `same` max pool.
pub const POINTWISE_CONV_ELU_MAXPOOL_SAME_L2: Net = Net {
    layers: "{ conv2d = { filters = 3, kernel = 1, l2 = 0.01 } },\n{ elu = {} },\n{ maxpool = { size = 3, stride = 2, padding = \"same\" } },\n{ flatten = {} },\n{ dense = { units = \"$classes\", l2 = 0.02 } },\n{ softmax = {} },",
    input: "[5, 5, 2]",
};

/// A conv read by three layers (two branches concatenated, and an add), batch norm.
pub const BRANCH_USED_THREE_TIMES_CONCAT_AND_ADD: Net = Net {
    layers: r#"{ name = "a", conv2d = { filters = 4, kernel = 3 } },
{ name = "b", conv2d = { filters = 2, kernel = 1 }, inputs = ["a"] },
{ name = "c", maxpool = { size = 3, stride = 1, padding = "same" }, inputs = ["a"] },
{ name = "d", concat = {}, inputs = ["b", "c"] },
{ name = "e", conv2d = { filters = 4, kernel = 3 } },
{ name = "f", add = {}, inputs = ["e", "a"] },
{ batchnorm = {} },
{ relu = {} },
{ flatten = {} },
{ dense = "$classes" },
{ softmax = {} },"#,
    input: "[4, 4, 2]",
};

/// What a finite-difference check needs of a backend's network in f64: its parameters
/// and their names, and in training mode (dropout seed 7) the loss (cross-entropy + L2)
/// of a batch and its gradient with respect to every parameter.
pub trait Differentiable {
    fn params(&mut self) -> &mut Vec<Vec<f64>>;
    fn names(&self) -> Vec<String>;
    fn train_loss(&mut self, x: &[f64], labels: &[i64]) -> f64;
    fn train_gradients(&mut self, x: &[f64], labels: &[i64]) -> Vec<Vec<f64>>;
}

/// Analytic gradients of `net` (a network of graph `g`) against central differences
/// (step 1e-6) on a batch of `n` random inputs (labels 0, 1, 2, 0, ...): with every
/// parameter first moved off its initial value (biases, gammas, betas are not at special
/// values), `per_param` random entries of every parameter (all of a shorter one) agree to
/// 1e-4 relative or 1e-8 absolute. The random draws are seeded by `seed + 1`.
pub fn check_gradients(
    net: &mut impl Differentiable,
    g: &Graph,
    n: usize,
    seed: u64,
    per_param: usize,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 1);
    for p in net.params().iter_mut() {
        for v in p.iter_mut() {
            *v += rng.random_range(-0.3..0.3);
        }
    }
    let x: Vec<f64> = (0..n * input_len(g))
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let labels: Vec<i64> = (0..n).map(|i| (i % 3) as i64).collect();
    let grads = net.train_gradients(&x, &labels);
    let names = net.names();
    let h = 1e-6;
    let mut checked = 0;
    for p in 0..net.params().len() {
        let len = net.params()[p].len();
        let picks: Vec<usize> = if len <= per_param {
            (0..len).collect()
        } else {
            (0..per_param).map(|_| rng.random_range(0..len)).collect()
        };
        for i in picks {
            let orig = net.params()[p][i];
            net.params()[p][i] = orig + h;
            let lp = net.train_loss(&x, &labels);
            net.params()[p][i] = orig - h;
            let lm = net.train_loss(&x, &labels);
            net.params()[p][i] = orig;
            let num = (lp - lm) / (2.0 * h);
            let ana = grads[p][i];
            let rel = (num - ana).abs() / (num.abs() + ana.abs()).max(1e-7);
            assert!(
                rel < 1e-4 || (num - ana).abs() < 1e-8,
                "{}[{i}]: analytic {ana:e}, numeric {num:e} (relative error {rel:e})",
                names[p]
            );
            checked += 1;
        }
    }
    assert!(checked > 0);
}

/// The gradient checks that both backends run, one `#[test]` each, named by the caller
/// (`shared_gradchecks!(check: conv, strided, pointwise, branch)`): `check(&graph, batch,
/// seed)` on [`CONV_SAME_MAXPOOL_DENSE`], [`STRIDED_VALID_CONV_BATCHNORM_RELU_GLOBAL_POOL`],
/// [`POINTWISE_CONV_ELU_MAXPOOL_SAME_L2`] and [`BRANCH_USED_THREE_TIMES_CONCAT_AND_ADD`].
#[allow(unused_macros)] // only the backends' tests check gradients
macro_rules! shared_gradchecks {
    ($check:ident: $conv:ident, $strided:ident, $pointwise:ident, $branch:ident) => {
        $crate::common::gradcheck::shared_gradchecks!(@tests $check;
            $conv: CONV_SAME_MAXPOOL_DENSE, 3, 1;
            $strided: STRIDED_VALID_CONV_BATCHNORM_RELU_GLOBAL_POOL, 4, 2;
            $pointwise: POINTWISE_CONV_ELU_MAXPOOL_SAME_L2, 3, 3;
            $branch: BRANCH_USED_THREE_TIMES_CONCAT_AND_ADD, 3, 5;
        );
    };
    (@tests $check:ident; $($name:ident: $net:ident, $n:expr, $seed:expr;)*) => {
        $(
            #[test]
            fn $name() {
                $check(&$crate::common::gradcheck::$net.graph(), $n, $seed);
            }
        )*
    };
}
#[allow(unused_imports)] // only the backends' tests check gradients
pub(crate) use shared_gradchecks;
