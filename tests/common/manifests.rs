//! Manifest texts the tests share: the Tiny ImageNet data stages, `[networks.tiny]`, a
//! pipeline on generated images built to order ([`Generated`]) and the one the store's
//! tests run ([`pipeline_t`]); and [`fill`] for the templates of tests/manifests/.

use std::path::Path;

/// `[networks.tiny]`, the small network most tests train: on 16x16 RGB images, a conv of
/// 4 filters, relu, global average pooling, a dense layer of `classes` and softmax.
pub fn tiny_network(classes: usize) -> String {
    format!(
        r#"[networks.tiny]
input = [16, 16, 3]
classes = {classes}
layers = [
  {{ conv2d = {{ filters = 4, kernel = 3 }} }},
  {{ relu = {{}} }},
  {{ global_avgpool = {{}} }},
  {{ dense = "$classes" }},
  {{ softmax = {{}} }},
]
"#
    )
}

/// The standard three-stage manifest over a Tiny ImageNet root.
pub fn tiny_manifest(root: &Path, test_per_class: usize) -> String {
    format!(
        r#"name = "exp"
seed = 42

[stages.ingest]
kind = "ingest"
format = "tiny-imagenet"
root = "{}"

[stages.split]
kind = "split"
input = "ingest"
test_per_class = {test_per_class}

[stages.hdf5]
kind = "hdf5"
input = "split"
"#,
        root.display()
    )
}

/// A pipeline on generated images (seed 3): a synthetic ingest of 16x16 RGB images
/// (3 classes of 12 training and 6 validation images unless told otherwise), optionally a
/// split, the hdf5 stage, `[networks.tiny]` and a training (`batch_size = 8`, `lr = 0.01`,
/// 2 epochs unless told otherwise); optionally checkpoints every epoch, an lr drop and an
/// evaluation on `val` (`top_k = [1, 2]`) of the last model.
///
/// `text()` writes the same lines in the same order every time (tests edit it with
/// `replace`, and errors name its lines).
#[derive(Clone, Debug)]
pub struct Generated {
    name: String,
    description: Option<String>,
    classes: usize,
    train_per_class: usize,
    val_per_class: usize,
    test_per_class: Option<usize>,
    epochs: usize,
    checkpoints: bool,
    drop: Option<(String, usize)>,
    evaluate: bool,
}

impl Generated {
    pub fn new(name: &str) -> Generated {
        Generated {
            name: name.to_string(),
            description: None,
            classes: 3,
            train_per_class: 12,
            val_per_class: 6,
            test_per_class: None,
            epochs: 2,
            checkpoints: false,
            drop: None,
            evaluate: false,
        }
    }

    /// `description = "<text>"` after the name (written as is, not escaped).
    pub fn description(mut self, text: &str) -> Generated {
        self.description = Some(text.to_string());
        self
    }

    pub fn val_per_class(mut self, n: usize) -> Generated {
        self.val_per_class = n;
        self
    }

    /// A split stage holding out `test_per_class` training images of each class; hdf5
    /// reads it.
    pub fn split(mut self, test_per_class: usize) -> Generated {
        self.test_per_class = Some(test_per_class);
        self
    }

    /// The training's epochs.
    pub fn epochs(mut self, n: usize) -> Generated {
        self.epochs = n;
        self
    }

    /// `checkpoint_every = 1` in the training.
    pub fn checkpoints(mut self) -> Generated {
        self.checkpoints = true;
        self
    }

    /// `[stages.drop]`, an lr drop from the training to `lr` (as written) for `epochs`.
    pub fn drop(mut self, lr: &str, epochs: usize) -> Generated {
        self.drop = Some((lr.to_string(), epochs));
        self
    }

    /// `[stages.evaluate]` of the last model on `val`.
    pub fn evaluate(mut self) -> Generated {
        self.evaluate = true;
        self
    }

    pub fn text(&self) -> String {
        let mut t = format!("name = \"{}\"\n", self.name);
        if let Some(d) = &self.description {
            t += &format!("description = \"{d}\"\n");
        }
        t += &format!(
            "seed = 3\n\n[stages.ingest]\nformat = \"synthetic\"\nclasses = {}\ntrain_per_class = {}\nval_per_class = {}\nimage_size = [16, 16]\n\n",
            self.classes, self.train_per_class, self.val_per_class
        );
        let hdf5_input = match self.test_per_class {
            Some(n) => {
                t += &format!("[stages.split]\ninput = \"ingest\"\ntest_per_class = {n}\n\n");
                "split"
            }
            None => "ingest",
        };
        t += &format!("[stages.hdf5]\ninput = \"{hdf5_input}\"\n\n");
        t += &tiny_network(self.classes);
        t += &format!(
            "\n[stages.train]\ninput = \"hdf5\"\nnetwork = \"tiny\"\nepochs = {}\nbatch_size = 8\nlr = 0.01\n",
            self.epochs
        );
        if self.checkpoints {
            t += "checkpoint_every = 1\n";
        }
        let mut last = "train";
        if let Some((lr, epochs)) = &self.drop {
            t += &format!(
                "\n[stages.drop]\nkind = \"lr-drop\"\nfrom = \"train\"\nlr = {lr}\nepochs = {epochs}\n"
            );
            last = "drop";
        }
        if self.evaluate {
            t += &format!(
                "\n[stages.evaluate]\ninput = \"{last}\"\nsplit = \"val\"\ntop_k = [1, 2]\n"
            );
        }
        t
    }
}

/// The pipeline `t` that the store's tests run: [`Generated`] data with 4 validation
/// images per class, and a training of 2 epochs with a checkpoint after each.
pub fn pipeline_t() -> String {
    Generated::new("t").val_per_class(4).checkpoints().text()
}

/// [`pipeline_t`] with a split stage (2 test images per class) before hdf5, training 4
/// epochs.
pub fn pipeline_t_with_split() -> String {
    Generated::new("t")
        .val_per_class(4)
        .split(2)
        .epochs(4)
        .checkpoints()
        .text()
}

/// A manifest template (one of tests/manifests/) with every `{key}` in it replaced by its
/// value; each key must be there.
pub fn fill(template: &str, values: &[(&str, &dyn std::fmt::Display)]) -> String {
    let mut text = template.to_string();
    for (key, value) in values {
        let slot = format!("{{{key}}}");
        assert!(text.contains(&slot), "the template has no {slot}");
        text = text.replace(&slot, &value.to_string());
    }
    text
}
