//! Networks as data: expansion, shapes, parameter totals derived by hand, error messages.

mod common;

use common::Project;
use pipe::manifest;
use pipe::nn::graph::{totals, Op, Shape};

/// The front end whole: the manifest typed and checked, then its networks expanded and
/// shape-checked.
fn load(p: &Project, text: &str) -> Result<manifest::Pipeline, manifest::ManifestError> {
    let path = p.manifest("net.toml", text);
    let m = manifest::load(&path, &[], p.path())?;
    pipe::nn::check(&m)?;
    Ok(m)
}

const STAGES: &str = "\n[stages.ingest]\nformat = \"synthetic\"\n";

fn shipped(name: &str) -> manifest::Pipeline {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines"));
    manifest::load(&dir.join(name), &[], dir.parent().unwrap()).unwrap()
}

/// Keras' count for Conv2D (with bias) followed by BatchNormalization (gamma, beta,
/// moving mean, moving variance), written out from the layer formulas.
fn conv_bn(k: usize, cin: usize, f: usize) -> usize {
    (k * k * cin * f + f) + 4 * f
}

#[test]
fn mini_googlenet_total_matches_the_hand_count() {
    let p = shipped("cifar10_minigooglenet_exp3.toml");
    let x = pipe::nn::expand(&p.library, "mini_googlenet", None).unwrap();
    let infos = x.graph.infer().unwrap();
    // Channel bookkeeping of the chapter's table.
    let mut total = conv_bn(3, 3, 96);
    let mut c = 96;
    let inception = |c: &mut usize, total: &mut usize, a: usize, b: usize| {
        *total += conv_bn(1, *c, a) + conv_bn(3, *c, b);
        *c = a + b;
    };
    let downsample = |c: &mut usize, total: &mut usize, k: usize| {
        *total += conv_bn(3, *c, k);
        *c += k;
    };
    inception(&mut c, &mut total, 32, 32);
    inception(&mut c, &mut total, 32, 48);
    downsample(&mut c, &mut total, 80);
    for (a, b) in [(112, 48), (96, 64), (80, 80), (48, 96)] {
        inception(&mut c, &mut total, a, b);
    }
    downsample(&mut c, &mut total, 96);
    inception(&mut c, &mut total, 176, 160);
    inception(&mut c, &mut total, 176, 160);
    assert_eq!(c, 336);
    total += c * 10 + 10;
    let t = totals(&infos);
    assert_eq!(t.trainable + t.non_trainable, total);
    assert_eq!(total, 1_656_250);
    // "About 1.65 M parameters" says the chapter.
    assert!((1_600_000..1_700_000).contains(&total));
    let last = infos.len() - 1;
    assert_eq!(infos[last].shape, Shape::Flat(10));
    let pool = x.graph.nodes.iter().position(|n| n.name == "pool").unwrap();
    assert_eq!(infos[pool].shape, Shape::Image(1, 1, 336));
    let down1 = x
        .graph
        .nodes
        .iter()
        .position(|n| n.name == "down1/concat")
        .unwrap();
    assert_eq!(infos[down1].shape, Shape::Image(15, 15, 160));
}

#[test]
fn deeper_googlenet_total_matches_the_hand_count() {
    let p = shipped("tiny_imagenet_exp3.toml");
    let x = pipe::nn::expand(&p.library, "deeper_googlenet", None).unwrap();
    let infos = x.graph.infer().unwrap();
    let mut total = conv_bn(5, 3, 64) + conv_bn(1, 64, 64) + conv_bn(3, 64, 192);
    let mut c = 192;
    let table = [
        (64, 96, 128, 16, 32, 32),
        (128, 128, 192, 32, 96, 64),
        (192, 96, 208, 16, 48, 64),
        (160, 112, 224, 24, 64, 64),
        (128, 128, 256, 24, 64, 64),
        (112, 144, 288, 32, 64, 64),
        (256, 160, 320, 32, 128, 128),
    ];
    for (n1, r3, n3, r5, n5, pj) in table {
        total += conv_bn(1, c, n1)
            + conv_bn(1, c, r3)
            + conv_bn(3, r3, n3)
            + conv_bn(1, c, r5)
            + conv_bn(5, r5, n5)
            + conv_bn(1, c, pj);
        c = n1 + n3 + n5 + pj;
    }
    assert_eq!(c, 832);
    total += c * 200 + 200;
    let t = totals(&infos);
    assert_eq!(t.trainable + t.non_trainable, total);
    // Running statistics are the only non-trainable parameters: 2 per BN channel.
    let bn_channels: usize = x
        .graph
        .nodes
        .iter()
        .zip(&infos)
        .filter(|(n, _)| matches!(n.op, Op::BatchNorm { .. }))
        .map(|(_, i)| match i.shape {
            Shape::Image(_, _, c) => c,
            Shape::Flat(c) => c,
        })
        .sum();
    assert_eq!(t.non_trainable, 2 * bn_channels);
    assert_eq!(infos.last().unwrap().shape, Shape::Flat(200));
    // exp3 sets L2 2e-4 on every convolution and the classifier.
    for n in &x.graph.nodes {
        if let Op::Conv2d { l2, .. } | Op::Dense { l2, .. } = n.op {
            assert_eq!(l2, 2e-4, "{}", n.name);
        }
    }
    // Nine inception modules would be 7 here; the chapter's 4a-4e version has all seven,
    // exp1's network none of 4a-4e.
    let no4 = pipe::nn::expand(&p.library, "deeper_googlenet_no4", None).unwrap();
    assert!(no4.graph.nodes.iter().all(|n| !n.name.starts_with("4")));
    assert!(x.graph.nodes.iter().any(|n| n.name == "4e/mixed"));
}

#[test]
fn renaming_a_block_changes_no_structure_but_a_filter_count_does() {
    let p = Project::new();
    let net = r#"
[blocks.cbr]
params = ["k"]
layers = [ { conv2d = { filters = "$k", kernel = 3 } }, { batchnorm = {} }, { relu = {} } ]

[networks.n]
input = [8, 8, 3]
classes = 4
layers = [ { cbr = [8] }, { cbr = [8] }, { global_avgpool = {} }, { dense = "$classes" } ]
"#;
    let a = load(&p, &(net.to_string() + STAGES)).unwrap();
    let renamed = net.replace("cbr", "conv_bn_relu");
    let b = load(&p, &(renamed + STAGES)).unwrap();
    let wider = net.replace("{ cbr = [8] }, { global", "{ cbr = [16] }, { global");
    let c = load(&p, &(wider + STAGES)).unwrap();
    let s = |m: &manifest::Pipeline| {
        pipe::nn::expand(&m.library, "n", None)
            .unwrap()
            .graph
            .structure_json()
    };
    assert_eq!(s(&a), s(&b));
    assert_ne!(s(&a), s(&c));
    let names: Vec<String> = pipe::nn::expand(&a.library, "n", None)
        .unwrap()
        .graph
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .collect();
    assert_eq!(names[1], "cbr_1/conv2d_1");
    assert_eq!(names[4], "cbr_2/conv2d_1");
}

#[test]
fn shape_errors_name_the_node_and_the_shapes() {
    let p = Project::new();
    let text = r#"
[networks.n]
input = [16, 16, 3]
layers = [
  { name = "a", conv2d = { filters = 4, kernel = 3 } },
  { name = "b", conv2d = { filters = 4, kernel = 2, padding = "valid" }, inputs = ["input"] },
  { name = "mixed", concat = {}, inputs = ["a", "b"] },
]
"#;
    let e = load(&p, &(text.to_string() + STAGES)).unwrap_err();
    assert!(
        e.message
            .contains("mixed: concat inputs 16x16 (4 channels) and 15x15 (4 channels)"),
        "{e}"
    );
    assert!(e.location().unwrap().contains("net.toml:7:"), "{e}");

    let text = "[networks.n]\ninput = [8, 8, 3]\nlayers = [ { dense = 3 } ]\n";
    let e = load(&p, &(text.to_string() + STAGES)).unwrap_err();
    assert!(
        e.message.contains("dense needs a flat input, got 8x8x3"),
        "{e}"
    );
}

#[test]
fn network_mistakes_are_located_with_hints() {
    let p = Project::new();
    let base = r#"
[blocks.cbr]
params = ["k"]
layers = [ { conv2d = { filters = "$k", kernel = 3 } }, { relu = {} } ]

[networks.n]
input = [8, 8, 3]
layers = [ LAYER ]
"#;
    let case = |layer: &str| {
        let text = base.replace("LAYER", layer) + STAGES;
        (load(&p, &text).unwrap_err(), text)
    };
    let (e, t) = case("{ cbrr = [8] }");
    assert!(e.message.contains("unknown op or block `cbrr`"), "{e}");
    assert_eq!(e.help.as_deref(), Some("did you mean `cbr`?"));
    assert!(
        e.location().unwrap().ends_with(&format!(
            "net.toml:{}:14",
            t.lines().position(|l| l.contains("cbrr")).unwrap() + 1
        )),
        "{e}"
    );

    let (e, _) = case("{ conv2d = { filters = 8, kernal = 3 } }");
    assert!(
        e.message.contains("`conv2d` has no argument `kernal`"),
        "{e}"
    );
    assert_eq!(e.help.as_deref(), Some("did you mean `kernel`?"));

    let (e, _) = case("{ conv2d = { filters = \"$f\", kernel = 3 } }");
    assert!(e.message.contains("unknown parameter `$f`"), "{e}");

    let (e, _) = case("{ cbr = [8, 9] }");
    assert!(
        e.message.contains("`cbr` takes 1 argument(s) (k), got 2"),
        "{e}"
    );

    // Names a checkpoint gives its moving average and optimizer moments: a block used
    // as `ema` would have had its weights taken for the average.
    for reserved in ["ema", "opt", "input"] {
        let (e, t) = case(&format!("{{ cbr = [8], name = \"{reserved}\" }}"));
        assert!(e.message.contains("and not `input`, `ema` or `opt`"), "{e}");
        assert!(
            e.location().unwrap().ends_with(&format!(
                "net.toml:{}:32",
                t.lines()
                    .position(|l| l.contains(&format!("name = \"{reserved}\"")))
                    .unwrap()
                    + 1
            )),
            "{e}"
        );
    }

    let (e, _) = case("{ relu = {}, inputs = [\"nope\"] }");
    assert!(
        e.message
            .contains("reads `nope`, which is not an earlier layer"),
        "{e}"
    );

    let text = base
        .replace("LAYER", "{ cbr = [8] }")
        .replace("{ relu = {} }", "{ cbr = [\"$k\"] }")
        + STAGES;
    let e = load(&p, &text).unwrap_err();
    assert!(e.message.contains("block recursion: cbr -> cbr"), "{e}");
}

#[test]
fn pipe_graph_prints_a_summary_with_totals() {
    let p = Project::new();
    let net_dir = p.path().join("pipelines/networks");
    std::fs::create_dir_all(&net_dir).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/pipelines/networks/mini_googlenet.toml"
        ),
        net_dir.join("mini_googlenet.toml"),
    )
    .unwrap();
    p.manifest(
        "m.toml",
        &format!("include = [\"networks/mini_googlenet.toml\"]\n{STAGES}"),
    );
    let out = p.ok(&["graph", "m"]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("total params: 1,656,250"), "{s}");
    assert!(s.contains("inc8/concat"), "{s}");
    let line = s.lines().find(|l| l.starts_with("down1/concat")).unwrap();
    assert!(line.contains("15x15x160"), "{line}");
    assert!(line.contains("down1/conv/relu_1, down1/pool"), "{line}");
    let out = p.ok(&["graph", "m", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v[0]["trainable"].as_u64().unwrap() + v[0]["non_trainable"].as_u64().unwrap(),
        1_656_250
    );
}
