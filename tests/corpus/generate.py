"""Generate tests/corpus/broken/*.toml: manifests that are each broken in one way.

Run from the repository root:  python3 tests/corpus/generate.py
`tests/corpus.rs` runs every file through `pipe run --dry-run` and `pipe graph` and checks
that each fails, never panics, and says what `<case>.expect` beside it says: the error's
line:col (first line) and a phrase of its message (second line).
"""
import os
import shutil

BASE = '''name = "c"
seed = 3

[stages.ingest]
format = "synthetic"
classes = 3
train_per_class = 12
val_per_class = 4
image_size = [16, 16]

[stages.split]
input = "ingest"
test_per_class = 2

[stages.hdf5]
input = "split"
size = [16, 16]

[blocks.cbr]
params = ["k", "size"]
defaults = { size = 3 }
layers = [
  { conv2d = { filters = "$k", kernel = "$size" } },
  { batchnorm = {} },
  { relu = {} },
]

[networks.tiny]
input = [16, 16, 3]
classes = 3
layers = [
  { name = "c1", cbr = [4] },
  { maxpool = { size = 2 } },
  { name = "c2", cbr = [8] },
  { global_avgpool = {} },
  { dropout = 0.2 },
  { dense = "$classes" },
  { softmax = {} },
]

[stages.train]
input = "hdf5"
network = "tiny"
epochs = 2
batch_size = 8
optimizer = "sgd"
lr = 0.01
momentum = 0.9
augment = { flip = true, width_shift = 0.1 }
checkpoint_every = 1

[stages.drop]
kind = "lr-drop"
from = "train"
lr = 0.001
epochs = 1

[stages.evaluate]
input = "drop"
split = "test"
top_k = [1, 2]
'''

cases = []


def sub(desc, old, new, count=1):
    assert old in BASE, old
    cases.append((desc, BASE.replace(old, new, count), BASE.index(old)))


# Wrong types, one key at a time.
wrong = [
    ("seed", "seed = 3", 'seed = "three"'),
    ("classes", "classes = 3\ntrain", 'classes = "3"\ntrain'),
    ("train_per_class", "train_per_class = 12", "train_per_class = 1.5"),
    ("val_per_class", "val_per_class = 4", "val_per_class = [4]"),
    ("image_size", "image_size = [16, 16]", "image_size = 16"),
    ("image_size_str", "image_size = [16, 16]", 'image_size = ["a", "b"]'),
    ("test_per_class", "test_per_class = 2", 'test_per_class = "2"'),
    ("size", "size = [16, 16]\n\n[blocks", "size = { w = 16 }\n\n[blocks"),
    ("epochs", "epochs = 2", "epochs = 2.5"),
    ("epochs_str", "epochs = 2", 'epochs = "2"'),
    ("batch_size", "batch_size = 8", "batch_size = true"),
    ("optimizer", 'optimizer = "sgd"', "optimizer = 1"),
    ("lr_str", "lr = 0.01", 'lr = "0.01"'),
    ("momentum", "momentum = 0.9", 'momentum = "high"'),
    ("augment", "augment = { flip = true, width_shift = 0.1 }", "augment = true"),
    ("flip", "flip = true", 'flip = "yes"'),
    ("checkpoint_every", "checkpoint_every = 1", "checkpoint_every = [1]"),
    ("network", 'network = "tiny"', "network = 3"),
    ("from", 'from = "train"', "from = 1"),
    ("drop_epochs", "lr = 0.001\nepochs = 1", 'lr = 0.001\nepochs = "one"'),
    ("top_k", "top_k = [1, 2]", 'top_k = "1"'),
    ("top_k_item", "top_k = [1, 2]", 'top_k = [1, "2"]'),
    ("split", 'split = "test"', "split = 2"),
    ("input", 'input = "ingest"', "input = 5"),
    ("net_input", "input = [16, 16, 3]", 'input = "16x16"'),
    ("net_classes", "classes = 3\nlayers", 'classes = "three"\nlayers'),
    ("layers", "layers = [\n  { name = \"c1\"", "layers = 3\nx = [\n  { name = \"c1\""),
    ("params", 'params = ["k", "size"]', "params = 1"),
    ("defaults", "defaults = { size = 3 }", "defaults = 3"),
    ("filters", 'filters = "$k"', 'filters = "many"'),
    ("kernel", 'kernel = "$size"', "kernel = [1, 2, 3]"),
    ("dropout", "dropout = 0.2", 'dropout = "a lot"'),
    ("dense", 'dense = "$classes"', 'dense = { units = "x" }'),
    ("maxpool", "maxpool = { size = 2 }", 'maxpool = { size = "2" }'),
    ("format", 'format = "synthetic"', "format = 7"),
    ("name", 'name = "c"', "name = 1"),
    ("stages", "[stages.ingest]", "stages = 1\n[x.ingest]"),
]
for k, old, new in wrong:
    sub(f"type-{k}", old, new)

# Unknown keys (typos), one per table.
typos = [
    ("epochs = 2", "epoch = 2"),
    ("batch_size = 8", "batchsize = 8"),
    ("momentum = 0.9", "momentun = 0.9"),
    ("checkpoint_every = 1", "checkpoint_evry = 1"),
    ("optimizer = \"sgd\"", "optimiser = \"sgd\""),
    ("lr = 0.001", "lr_drop = 0.001"),
    ("top_k = [1, 2]", "topk = [1, 2]"),
    ("split = \"test\"", "splitt = \"test\""),
    ("test_per_class = 2", "tests_per_class = 2"),
    ("size = [16, 16]\n\n[blocks", "sise = [16, 16]\n\n[blocks"),
    ("image_size = [16, 16]", "img_size = [16, 16]"),
    ("train_per_class = 12", "train_per_klass = 12"),
    ("seed = 3", "sead = 3"),
    ("defaults = { size = 3 }", "default = { size = 3 }"),
    ("classes = 3\nlayers", "clases = 3\nlayers"),
    ("flip = true", "flipp = true"),
    ("width_shift = 0.1", "width_shif = 0.1"),
    ("filters = \"$k\"", "filter = \"$k\""),
    ("maxpool = { size = 2 }", "maxpool = { sizes = 2 }"),
    ("dropout = 0.2", "drop_out = 0.2"),
    ("global_avgpool = {}", "global_avg_pool = {}"),
    ("{ batchnorm = {} }", "{ batch_norm = {} }"),
    ("kind = \"lr-drop\"", "kind = \"lrdrop\""),
    ("format = \"synthetic\"", "format = \"synthetc\""),
    ("optimizer = \"sgd\"", "optimizer = \"adamx\""),
]
for i, (old, new) in enumerate(typos):
    sub(f"typo-{i:02}", old, new)

# Values out of range.
values = [
    ("epochs = 2", "epochs = 0"),
    ("epochs = 2", "epochs = -2"),
    ("batch_size = 8", "batch_size = 0"),
    ("lr = 0.01", "lr = 0"),
    ("lr = 0.01", "lr = -0.1"),
    ("lr = 0.01", "lr = nan"),
    ("lr = 0.01", "lr = inf"),
    ("lr = 0.01", "lr = -inf"),
    ("momentum = 0.9", "momentum = 1.0"),
    ("momentum = 0.9", "momentum = -0.1"),
    ("momentum = 0.9", "momentum = nan"),
    ("width_shift = 0.1", "width_shift = 1.5"),
    ("width_shift = 0.1", "width_shift = -0.1"),
    ("width_shift = 0.1", "width_shift = 0.1, rotation = 400"),
    ("width_shift = 0.1", "width_shift = 0.1, shear = -181"),
    ("width_shift = 0.1", "width_shift = 0.1, zoom = 2"),
    ("width_shift = 0.1", "width_shift = 0.1, height_shift = inf"),
    ("checkpoint_every = 1", "checkpoint_every = 0"),
    ("lr = 0.001", "lr = 0.0"),
    ("lr = 0.001\nepochs = 1", "lr = 0.001\nepochs = 0"),
    ("lr = 0.001", "lr = 0.001\nmomentum = 1.5"),
    ("top_k = [1, 2]", "top_k = [1, 5]"),
    ("top_k = [1, 2]", "top_k = [0]"),
    ("top_k = [1, 2]", "top_k = []"),
    ("split = \"test\"", "split = \"test\"\nbatch_size = 0"),
    ("classes = 3\ntrain", "classes = 0\ntrain"),
    ("train_per_class = 12", "train_per_class = 0"),
    ("image_size = [16, 16]", "image_size = [0, 16]"),
    ("image_size = [16, 16]", "image_size = [100000, 100000]"),
    ("size = [16, 16]\n\n[blocks", "size = [16, 99999]\n\n[blocks"),
    ("size = [16, 16]\n\n[blocks", "size = [32, 32]\n\n[blocks"),
    ("input = [16, 16, 3]", "input = [16, 16, 1]"),
    ("input = [16, 16, 3]", "input = [16, 16]"),
    ("dropout = 0.2", "dropout = 1.5"),
    ("test_per_class = 2", "test_per_class = 2\ntest_fraction = 0.5"),
    ("test_per_class = 2", "test_fraction = 1.5"),
    ("lr = 0.01", "lr = 0.01\nschedule = \"poly\"\npower = -2"),
    ("lr = 0.01", "lr = 0.01\nschedule = \"step\""),
    ('optimizer = "sgd"', 'optimizer = "adam"\nbeta1 = 1.0'),
    ("seed = 3", "seed = -3"),
]
for i, (old, new) in enumerate(values):
    sub(f"value-{i:02}", old, new)

# References and graph.
refs = [
    ('input = "ingest"', 'input = "ingets"'),
    ('input = "split"', 'input = "nope"'),
    ('input = "hdf5"', 'input = "split"'),
    ('input = "hdf5"', 'input = "ingest"'),
    ('from = "train"', 'from = "evaluate"'),
    ('from = "train"', 'from = "trian"'),
    ('input = "drop"', 'input = "hdf5"'),
    ('input = "drop"', 'input = "nowhere"'),
    ('network = "tiny"', 'network = "tinny"'),
    ('input = "ingest"', 'input = "hdf5"'),
    ('kind = "lr-drop"\nfrom = "train"', 'kind = "resume"\nfrom = "train@9"'),
    ('kind = "lr-drop"\nfrom = "train"', 'kind = "resume"\nfrom = "missing.safetensors"\ninput = "hdf5"'),
    ('kind = "lr-drop"', 'kind = "lr-drop"\ninput = "hdf5"'),
    ('[stages.evaluate]', '[stages.evaluate]\nkind = "bake"'),
    ('[stages.drop]\nkind = "lr-drop"', '[stages.drop]'),
    ('[stages.split]\ninput = "ingest"', '[stages.split]\ninput = "evaluate"'),
    ('{ name = "c1", cbr = [4] }', '{ name = "c1", cbx = [4] }'),
    ('{ name = "c2", cbr = [8] }', '{ name = "c2", cbr = [8], inputs = ["nope"] }'),
    ('{ name = "c2", cbr = [8] }', '{ name = "c1", cbr = [8] }'),
    ('{ name = "c1", cbr = [4] }', '{ name = "", cbr = [4] }'),
    ('{ name = "c1", cbr = [4] }', '{ name = "c1", cbr = [4, 3, 9] }'),
    ('{ name = "c1", cbr = [4] }', '{ name = "c1", cbr = { q = 4 } }'),
    ('{ name = "c1", cbr = [4] }', '{ name = "c1", cbr = [] }'),
    ('filters = "$k"', 'filters = "$kk"'),
    ('{ dense = "$classes" }', '{ dense = "$classes" },\n  { conv2d = { filters = 2, kernel = 3 } }'),
    ('{ global_avgpool = {} },', ''),
    ('{ maxpool = { size = 2 } }', '{ maxpool = { size = 40 } }'),
    ('{ maxpool = { size = 2 } }', '{ conv2d = { filters = 2, kernel = 30, padding = "valid" } }'),
    ('{ maxpool = { size = 2 } }', '{ concat = {} }'),
    ('{ maxpool = { size = 2 } }', '{ add = {}, inputs = ["c1", "input"] }'),
    ('params = ["k", "size"]', 'params = ["k", "k"]'),
    ('params = ["k", "size"]', 'params = ["k", ""]'),
    ('defaults = { size = 3 }', 'defaults = { nope = 3 }'),
    ('layers = [\n  { conv2d', 'layers = []\nold = [\n  { conv2d'),
    ('  { relu = {} },\n]\n\n[networks', '  { relu = {} },\n]\nlayers2 = 1\n\n[networks'),
    ('{ softmax = {} },\n]', '{ softmax = {} },\n  { relu = 3 },\n]'),
    ('{ softmax = {} },\n]', '{ softmax = {} },\n  { conv2d = { filters = 0, kernel = 3 } },\n]'),
    ('{ softmax = {} },\n]', '{ softmax = {} },\n  { conv2d = { filters = 2, kernel = 3, stride = 0 } },\n]'),
    ('[stages.train]', '[stages."bad\\u0001name"]\nkind = "train"'),
    ('[stages.train]', '[stages.""]\nkind = "train"'),
    ('[stages.train]', '[stages.' + 'x' * 120 + ']\nkind = "train"'),
    ('name = "c"', 'name = ""'),
    ('name = "c"', 'name = "c"\nextends = "missing.toml"'),
    ('name = "c"', 'name = "c"\ninclude = ["missing.toml"]'),
    ('name = "c"', 'name = "c"\ninclude = 3'),
    ('name = "c"', 'name = "c"\ndevice = "tpu"'),
    ('name = "c"', 'name = "c"\nbackend = "tensorflow"'),
    ('input = "hdf5"\nnetwork', 'input = "hdf5"\nbackend = "jax"\nnetwork'),
]
for i, (old, new) in enumerate(refs):
    sub(f"graph-{i:02}", old, new)

# Syntax.
syntax = [
    ("epochs = 2", "epochs = "),
    ("epochs = 2", "epochs = 2\nepochs = 3"),
    ('network = "tiny"', 'network = "tiny'),
    ("top_k = [1, 2]", "top_k = [1, 2"),
    ("[stages.train]", "[stages.train"),
    ("defaults = { size = 3 }", "defaults = { size = 3"),
    ("lr = 0.01", "lr = 0.01.1"),
    ("seed = 3", "seed == 3"),
    ("[stages.drop]", "[stages.train]"),
    ("image_size = [16, 16]", "image_size = [16, 16],"),
    ('split = "test"', "split = 'test"),
]
for i, (old, new) in enumerate(syntax):
    sub(f"syntax-{i:02}", old, new)


def subs(desc, pairs):
    """A case that changes the base in several places; its location is searched from the
    first change."""
    text = BASE
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new, 1)
    cases.append((desc, text, min(BASE.index(old) for old, _ in pairs)))


# Refused before anything runs: fixed-length lists, stage names `from` cannot name,
# endless runs, and what the manifest says of the data against the network.
sub("late-00", "size = [16, 16]\n\n[blocks", "size = [16, 16, 3]\n\n[blocks")
sub("late-01", "image_size = [16, 16]", "image_size = [16, 16, 16]")
sub("late-02", 'lr = 0.01', 'lr = 0.01\nschedule = "step"\nsteps = [[1, 0.001, 7]]')
sub("late-03", "[stages.drop]", '[stages."drop@2"]')
sub("late-04", "epochs = 2", "epochs = 9223372036854775807")
sub("late-05", "lr = 0.001\nepochs = 1", "lr = 0.001\nepochs = 200000")
sub("late-06", "batch_size = 8", "batch_size = 1000000")
subs("late-07", [("image_size = [16, 16]", "image_size = [20, 20]"),
                 ("size = [16, 16]\n\n[blocks", "\n\n[blocks")])
sub("late-08", "classes = 3\ntrain", "classes = 4\ntrain")
subs("late-09", [('format = "synthetic"\nclasses = 3\ntrain_per_class = 12\nval_per_class = 4\nimage_size = [16, 16]',
                  'format = "cifar10"\nroot = "data/cifar"'),
                 ("size = [16, 16]\n\n[blocks", "\n\n[blocks")])

# Sweeps: every point is checked before any runs, mistakes at their place in [sweep].
SW = "\n[sweep.grid]\n"
sub("sweep-00", "top_k = [1, 2]\n", "top_k = [1, 2]\n" + SW + '"train.lrr" = [0.1, 0.2]\n')
sub("sweep-01", "top_k = [1, 2]\n", "top_k = [1, 2]\n" + SW + '"trian.lr" = [0.1, 0.2]\n')
sub("sweep-02", "top_k = [1, 2]\n", "top_k = [1, 2]\n" + SW + '"train.epochs" = [1, 2, 3, 4, 5, 6, "seven"]\n')
sub("sweep-03", "top_k = [1, 2]\n", "top_k = [1, 2]\n" + SW + '"train.lr" = [0.1, -1.0]\n')
sub("sweep-04", "top_k = [1, 2]\n", "top_k = [1, 2]\n" + SW + '"train.lr" = []\n')
sub("sweep-05", "top_k = [1, 2]\n", "top_k = [1, 2]\n" + '\n[sweep.zip]\n"train.lr" = [0.1, 0.2]\n"drop.lr" = [0.01]\n')
sub("sweep-06", "top_k = [1, 2]\n", "top_k = [1, 2]\n" + SW + '"train.lr" = [0.1, 0.2, 0.1]\n')
sub("sweep-07", "top_k = [1, 2]\n", "top_k = [1, 2]\n" + SW + '"train.lr" = [0.1, 0.2]\n\n[sweep.halving]\nrungs = ["hdf5", "train"]\n')
sub("sweep-08", "top_k = [1, 2]\n", "top_k = [1, 2]\n" + SW + '"train.lr" = [0.1, 0.2]\n\n[sweep.halving]\nrungs = ["drop", "train"]\n')
sub("sweep-09", "top_k = [1, 2]\n", "top_k = [1, 2]\n" + '\n[sweep]\nmax_points = 5\n\n[sweep.grid]\n"train.lr" = [0.1, 0.2, 0.3]\n"drop.lr" = [0.01, 0.02]\n')
sub("sweep-10", "top_k = [1, 2]\n", "top_k = [1, 2]\n" + '\n[sweep.random]\nsamples = 4\n"train.lr" = { normal = [0.1, 0.2] }\n')
sub("sweep-11", "top_k = [1, 2]\n", "top_k = [1, 2]\n" + '\n[sweep.random]\nsamples = 4\n"train.lr" = { log_uniform = [0.0, 0.2] }\n')
sub("sweep-12", "top_k = [1, 2]\n", "top_k = [1, 2]\n" + SW + '"train.lr" = 0.1\n')
sub("sweep-13", "top_k = [1, 2]\n", "top_k = [1, 2]\n" + '\n[sweep]\ngird = 1\n')

# Bounds: nothing the manifest says may exhaust memory, the stack or a counter.
sub("bound-00", "cbr = [8]", "cbr = [9223372036854775807]")
sub("bound-01", '{ name = "c2", cbr = [8] },', '{ name = "c2", cbr = [8] },\n  { w9 = [] },')
cases[-1] = (cases[-1][0], cases[-1][1] + '\n[blocks.w0]\nlayers = [{ relu = {} }, { relu = {} }, { relu = {} }, { relu = {} }, { relu = {} }, { relu = {} }, { relu = {} }, { relu = {} }, { relu = {} }, { relu = {} }]\n\n[blocks.w1]\nlayers = [{ w0 = [] }, { w0 = [] }, { w0 = [] }, { w0 = [] }, { w0 = [] }, { w0 = [] }, { w0 = [] }, { w0 = [] }, { w0 = [] }, { w0 = [] }]\n\n[blocks.w2]\nlayers = [{ w1 = [] }, { w1 = [] }, { w1 = [] }, { w1 = [] }, { w1 = [] }, { w1 = [] }, { w1 = [] }, { w1 = [] }, { w1 = [] }, { w1 = [] }]\n\n[blocks.w3]\nlayers = [{ w2 = [] }, { w2 = [] }, { w2 = [] }, { w2 = [] }, { w2 = [] }, { w2 = [] }, { w2 = [] }, { w2 = [] }, { w2 = [] }, { w2 = [] }]\n\n[blocks.w4]\nlayers = [{ w3 = [] }, { w3 = [] }, { w3 = [] }, { w3 = [] }, { w3 = [] }, { w3 = [] }, { w3 = [] }, { w3 = [] }, { w3 = [] }, { w3 = [] }]\n\n[blocks.w5]\nlayers = [{ w4 = [] }, { w4 = [] }, { w4 = [] }, { w4 = [] }, { w4 = [] }, { w4 = [] }, { w4 = [] }, { w4 = [] }, { w4 = [] }, { w4 = [] }]\n\n[blocks.w6]\nlayers = [{ w5 = [] }, { w5 = [] }, { w5 = [] }, { w5 = [] }, { w5 = [] }, { w5 = [] }, { w5 = [] }, { w5 = [] }, { w5 = [] }, { w5 = [] }]\n\n[blocks.w7]\nlayers = [{ w6 = [] }, { w6 = [] }, { w6 = [] }, { w6 = [] }, { w6 = [] }, { w6 = [] }, { w6 = [] }, { w6 = [] }, { w6 = [] }, { w6 = [] }]\n\n[blocks.w8]\nlayers = [{ w7 = [] }, { w7 = [] }, { w7 = [] }, { w7 = [] }, { w7 = [] }, { w7 = [] }, { w7 = [] }, { w7 = [] }, { w7 = [] }, { w7 = [] }]\n\n[blocks.w9]\nlayers = [{ w8 = [] }, { w8 = [] }, { w8 = [] }, { w8 = [] }, { w8 = [] }, { w8 = [] }, { w8 = [] }, { w8 = [] }, { w8 = [] }, { w8 = [] }]\n', cases[-1][2])
sub("bound-02", '{ name = "c2", cbr = [8] },', '{ name = "c2", cbr = [8] },\n  { d39 = [] },')
cases[-1] = (cases[-1][0], cases[-1][1] + '\n[blocks.d0]\nlayers = [{ relu = {} }]\n\n[blocks.d1]\nlayers = [{ d0 = [] }]\n\n[blocks.d2]\nlayers = [{ d1 = [] }]\n\n[blocks.d3]\nlayers = [{ d2 = [] }]\n\n[blocks.d4]\nlayers = [{ d3 = [] }]\n\n[blocks.d5]\nlayers = [{ d4 = [] }]\n\n[blocks.d6]\nlayers = [{ d5 = [] }]\n\n[blocks.d7]\nlayers = [{ d6 = [] }]\n\n[blocks.d8]\nlayers = [{ d7 = [] }]\n\n[blocks.d9]\nlayers = [{ d8 = [] }]\n\n[blocks.d10]\nlayers = [{ d9 = [] }]\n\n[blocks.d11]\nlayers = [{ d10 = [] }]\n\n[blocks.d12]\nlayers = [{ d11 = [] }]\n\n[blocks.d13]\nlayers = [{ d12 = [] }]\n\n[blocks.d14]\nlayers = [{ d13 = [] }]\n\n[blocks.d15]\nlayers = [{ d14 = [] }]\n\n[blocks.d16]\nlayers = [{ d15 = [] }]\n\n[blocks.d17]\nlayers = [{ d16 = [] }]\n\n[blocks.d18]\nlayers = [{ d17 = [] }]\n\n[blocks.d19]\nlayers = [{ d18 = [] }]\n\n[blocks.d20]\nlayers = [{ d19 = [] }]\n\n[blocks.d21]\nlayers = [{ d20 = [] }]\n\n[blocks.d22]\nlayers = [{ d21 = [] }]\n\n[blocks.d23]\nlayers = [{ d22 = [] }]\n\n[blocks.d24]\nlayers = [{ d23 = [] }]\n\n[blocks.d25]\nlayers = [{ d24 = [] }]\n\n[blocks.d26]\nlayers = [{ d25 = [] }]\n\n[blocks.d27]\nlayers = [{ d26 = [] }]\n\n[blocks.d28]\nlayers = [{ d27 = [] }]\n\n[blocks.d29]\nlayers = [{ d28 = [] }]\n\n[blocks.d30]\nlayers = [{ d29 = [] }]\n\n[blocks.d31]\nlayers = [{ d30 = [] }]\n\n[blocks.d32]\nlayers = [{ d31 = [] }]\n\n[blocks.d33]\nlayers = [{ d32 = [] }]\n\n[blocks.d34]\nlayers = [{ d33 = [] }]\n\n[blocks.d35]\nlayers = [{ d34 = [] }]\n\n[blocks.d36]\nlayers = [{ d35 = [] }]\n\n[blocks.d37]\nlayers = [{ d36 = [] }]\n\n[blocks.d38]\nlayers = [{ d37 = [] }]\n\n[blocks.d39]\nlayers = [{ d38 = [] }]\n', cases[-1][2])
sub("bound-03", "top_k = [1, 2]\n", "top_k = [1, 2]\n" + SW + "".join(f'"train.p{i}" = [' + ", ".join(str(v) for v in range(1, 17)) + "]\n" for i in range(16)))
sub("bound-05", "top_k = [1, 2]", "top_k = [2, 1, 1]")
sub("bound-06", 'name = "c"\n', 'name = "c"\nextends = "."\n')
sub("bound-07", "top_k = [1, 2]\n", "top_k = [1, 2]\n\n[stages.evaluate." + ".".join(f"k{i}" for i in range(200)) + "]\nv = 1\n")
sub("bound-04", "top_k = [1, 2]\n", "top_k = [1, 2]\n" + '\n[sweep]\nmax_points = 1000000000\n\n[sweep.random]\nsamples = 1000000000\n"train.lr" = { log_uniform = [0.001, 0.1] }\n')


# Keys that would change the stage key and nothing else, and shapes and values that would
# train to nothing: refused at load.
sub("quiet-00", "input = [16, 16, 3]\nclasses = 3\nlayers", "input = [16, 16, 3]\nclasses = 3\nparams = { regg = 1 }\nlayers")
sub("quiet-03", "lr = 0.01", 'lr = 0.01\nschedule = "step"\nsteps = [[5, 0.001]]')
sub("quiet-04", "lr = 0.01", 'lr = 0.01\nschedule = "step"\nsteps = [[1, 0.0]]')
subs("quiet-06", [('optimizer = "sgd"', 'optimizer = "adam"\nbeta2 = 1.5'), ("momentum = 0.9\n", "")])
sub("quiet-08", "maxpool = { size = 2 }", "maxpool = { size = 2, padding = 5 }")
sub("quiet-09", 'kernel = "$size" }', 'kernel = "$size", padding = 9223372036854775807 }')
sub("quiet-10", '{ name = "c2", cbr = [8] },', '{ name = "c2", cbr = [8] },\n  { name = "dead", relu = {} },\n  { global_avgpool = {}, inputs = ["c2"] },')
sub("quiet-11", "{ batchnorm = {} }", "{ batchnorm = { momentum = 5.0 } }")
subs("quiet-12", [("checkpoint_every = 1", "checkpoint_every = 2"),
                  ("top_k = [1, 2]\n", 'top_k = [1, 2]\n\n[stages.again]\nkind = "resume"\nfrom = "train@1"\nlr = 0.001\nepochs = 1\n')])
sub("quiet-13", "train_per_class = 12", "train_per_class = 4294967296")
# A halving rung no swept key changes: every point ties there, and point order decides.
sub("sweep-14", "top_k = [1, 2]\n", "top_k = [1, 2]\n" + SW + '"drop.lr" = [0.001, 0.0005]\n\n[sweep.halving]\nrungs = ["train", "drop"]\n')

# What each case must report and where. `at` is the text the error points at, searched
# from where the case changed the base (from the top of the file when it starts with `^`);
# `phrase` is part of the message.
EXPECT = {
    '000-type-seed': ('"', 'wrong type: expected u64, found string "three"'),
    '001-type-classes': ('"', 'wrong type: expected usize, found string "3"'),
    '002-type-train_per_class': ('1', 'wrong type: expected usize, found floating point `1.5`'),
    '003-type-val_per_class': ('[', 'wrong type: expected usize, found sequence'),
    '004-type-image_size': ('16', 'wrong type: expected an array of length 2, found integer'),
    '005-type-image_size_str': ('"', 'wrong type: expected u32, found string "a"'),
    '006-type-test_per_class': ('"', 'wrong type: expected usize, found string "2"'),
    '007-type-size': ('{', 'wrong type: expected an array of length 2, found map'),
    '008-type-epochs': ('2', 'wrong type: expected usize, found floating point `2.5`'),
    '009-type-epochs_str': ('"', 'wrong type: expected usize, found string "2"'),
    '010-type-batch_size': ('true', 'wrong type: expected usize, found boolean `true`'),
    '011-type-optimizer': ('1', 'wrong type: expected a string, found integer'),
    '012-type-lr_str': ('"', 'wrong type: expected f64, found string "0.01"'),
    '013-type-momentum': ('"', 'wrong type: expected f64, found string "high"'),
    '014-type-augment': ('true', 'wrong type: expected struct AugmentConfig, found boolean'),
    '015-type-flip': ('"', 'wrong type: expected a boolean, found string "yes"'),
    '016-type-checkpoint_every': ('[', 'wrong type: expected usize, found sequence'),
    '017-type-network': ('3', 'wrong type: expected a string, found integer `3`'),
    '018-type-from': ('1', 'wrong type: expected a string, found integer `1`'),
    '019-type-drop_epochs': ('"', 'wrong type: expected usize, found string "one"'),
    '020-type-top_k': ('"', 'wrong type: expected a sequence, found string "1"'),
    '021-type-top_k_item': ('"', 'wrong type: expected usize, found string "2"'),
    '022-type-split': ('2', 'wrong type: expected a string, found integer `2`'),
    '023-type-input': ('5', 'wrong type: expected a stage name or a list of them, found'),
    '024-type-net_input': ('"', '`input` must be [height, width, channels]'),
    '025-type-net_classes': ('"', 'wrong type: expected a non-negative integer, found string'),
    '026-type-layers': ('x', 'unknown key `x`'),
    '027-type-params': ('1', '`params` must be an array of names'),
    '028-type-defaults': ('3', 'wrong type: expected a table, found integer'),
    '029-type-filters': ('"', 'wrong type: expected a non-negative integer, found string'),
    '030-type-kernel': ('[', 'wrong type: expected a non-negative integer, found array'),
    '031-type-dropout': ('"', 'wrong type: expected a number, found string "a lot"'),
    '032-type-dense': ('"', 'wrong type: expected a non-negative integer, found string'),
    '033-type-maxpool': ('"', 'wrong type: expected a non-negative integer, found string'),
    '034-type-format': ('7', 'wrong type: expected a string, found integer'),
    '035-type-name': ('1', 'wrong type: expected a string, found integer `1`'),
    '036-type-stages': ('stages.', 'invalid TOML: cannot extend value of type integer with a'),
    '037-typo-00': ('epoch', 'unknown key `epoch`'),
    '038-typo-01': ('batchsize', 'unknown key `batchsize`'),
    '039-typo-02': ('momentun', 'unknown key `momentun`'),
    '040-typo-03': ('checkpoint_evry', 'unknown key `checkpoint_evry`'),
    '041-typo-04': ('optimiser', 'unknown key `optimiser`'),
    '042-typo-05': ('lr_drop', 'unknown key `lr_drop`'),
    '043-typo-06': ('topk', 'unknown key `topk`'),
    '044-typo-07': ('splitt', 'unknown key `splitt`'),
    '045-typo-08': ('tests_per_class', 'unknown key `tests_per_class`'),
    '046-typo-09': ('sise', 'unknown key `sise`'),
    '047-typo-10': ('img_size', 'unknown key `img_size`'),
    '048-typo-11': ('train_per_klass', 'unknown key `train_per_klass`'),
    '049-typo-12': ('sead', 'unknown key `sead`'),
    '050-typo-13': ('default', 'unknown key `default`'),
    '051-typo-14': ('clases', 'unknown key `clases`'),
    '052-typo-15': ('flipp', 'unknown key `flipp`'),
    '053-typo-16': ('width_shif', 'unknown key `width_shif`'),
    '054-typo-17': ('filter', '`conv2d` has no argument `filter`'),
    '055-typo-18': ('sizes', '`maxpool` has no argument `sizes`'),
    '056-typo-19': ('drop_out', 'unknown op or block `drop_out`'),
    '057-typo-20': ('global_avg_pool', 'unknown op or block `global_avg_pool`'),
    '058-typo-21': ('batch_norm', 'unknown op or block `batch_norm`'),
    '059-typo-22': ('"', 'unknown stage kind `lrdrop`'),
    '060-typo-23': ('"', 'unknown value `synthetc`'),
    '061-typo-24': ('"', 'unknown value `adamx`'),
    '062-value-00': ('epochs', '`epochs` must be > 0'),
    '063-value-01': ('-', 'invalid value: integer `-2`, expected usize'),
    '064-value-02': ('batch_size', '`batch_size` must be > 0'),
    '065-value-03': ('lr', '`lr` must be > 0'),
    '066-value-04': ('lr', '`lr` must be > 0'),
    '067-value-05': ('nan', '`stages.train.lr` is NaN: numbers must be finite'),
    '068-value-06': ('inf', '`stages.train.lr` is inf: numbers must be finite'),
    '069-value-07': ('-', '`stages.train.lr` is -inf: numbers must be finite'),
    '070-value-08': ('momentum', '`momentum` = 1 must be in [0, 1)'),
    '071-value-09': ('momentum', '`momentum` = -0.1 must be in [0, 1)'),
    '072-value-10': ('nan', '`stages.train.momentum` is NaN: numbers must be finite'),
    '073-value-11': ('width_shift', '`augment.width_shift` = 1.5 must be in [0, 1] (a fraction'),
    '074-value-12': ('width_shift', '`augment.width_shift` = -0.1 must be in [0, 1] (a fraction'),
    '075-value-13': ('rotation', '`augment.rotation` = 400 must be at most 180 (degrees)'),
    '076-value-14': ('shear', '`augment.shear` = -181 must be at most 180 (degrees)'),
    '077-value-15': ('zoom', '`augment.zoom` = 2 must be in [0, 1] (a fraction of the'),
    '078-value-16': ('inf', '`stages.train.augment.height_shift` is inf: numbers must be'),
    '079-value-17': ('checkpoint_every', '`checkpoint_every` must be > 0'),
    '080-value-18': ('lr', '`lr` must be > 0'),
    '081-value-19': ('epochs', '`epochs` must be > 0'),
    '082-value-20': ('momentum', '`momentum` = 1.5 must be in [0, 1)'),
    '083-value-21': ('top_k', '`top_k` asks for rank-5, but the network has 3 classes'),
    '084-value-22': ('top_k', 'in increasing order (e.g. [1, 5]), got [0]'),
    '085-value-23': ('top_k', 'in increasing order (e.g. [1, 5]), got []'),
    '086-value-24': ('batch_size', '`batch_size` must be > 0'),
    '087-value-25': ('classes', '`classes` must be > 0'),
    '088-value-26': ('train_per_class', '`train_per_class` must be > 0'),
    '089-value-27': ('image_size', '`image_size` = [0, 16]: each side must be between 1 and'),
    '090-value-28': ('image_size', '`image_size` = [100000, 100000]: each side must be between'),
    '091-value-29': ('size', '`size` = [16, 99999]: each side must be between 1 and 4096'),
    '092-value-30': ('"hdf5', 'network `tiny` takes 16x16x3 images (`networks.tiny.input ='),
    '093-value-31': ('"hdf5', 'network `tiny` takes 16x16x1 images (`networks.tiny.input ='),
    '094-value-32': ('[', '`input` must be [height, width, channels]'),
    '095-value-33': ('1', 'dropout `rate` = 1.5 must be in [0, 1)'),
    '096-value-34': ('test_fraction', '`test_per_class` and `test_fraction` exclude each other'),
    '097-value-35': ('test_fraction', '`test_fraction` must be between 0 and 1 (exclusive), got 1.5'),
    '098-value-36': ('power', '`power` = -2 must be >= 0'),
    '099-value-37': ('schedule', 'schedule = "step" needs `steps = [[epoch, lr], ...]`'),
    '100-value-38': ('beta1', '`beta1` = 1 must be in [0, 1)'),
    '101-value-39': ('-', 'invalid value: integer `-3`, expected u64'),
    '102-graph-00': ('"', 'stage `split` reads `ingets`, which is not a stage of this'),
    '103-graph-01': ('"', 'stage `hdf5` reads `nope`, which is not a stage of this'),
    '104-graph-02': ('"', 'stage `train` (train) needs the HDF5 files of an hdf5'),
    '105-graph-03': ('"', 'stage `train` (train) needs the HDF5 files of an hdf5'),
    '106-graph-04': ('"', 'stage `drop` (lr-drop) needs a model from a train, lr-drop'),
    '107-graph-05': ('"', 'stage `drop` reads `trian`, which is not a stage of this'),
    '108-graph-06': ('"', 'stage `evaluate` (evaluate) needs a model from a train,'),
    '109-graph-07': ('"', 'stage `evaluate` reads `nowhere`, which is not a stage of'),
    '110-graph-08': ('network', 'no network `tinny` in this manifest'),
    '111-graph-09': ('"', 'stage `split` (split) needs an index from an ingest or'),
    '112-graph-10': ('"train', '`from = "train@9"`: stage `train` trains epochs 1..2, so it'),
    '113-graph-11': ('"missing', '`from` must be "<stage>@<epoch>" or a checkpoint file;'),
    '114-graph-12': ('"hdf5', 'a lr-drop stage names what it continues with `from`, not'),
    '115-graph-13': ('"', 'unknown stage kind `bake`'),
    '116-graph-14': ('drop', 'missing required key `kind` in stage `drop`'),
    '117-graph-15': ('"', 'stage `split` (split) needs an index from an ingest or'),
    '118-graph-16': ('cbx', 'unknown op or block `cbx`'),
    '119-graph-17': ('"nope', '`c2` reads `nope`, which is not an earlier layer here'),
    '120-graph-18': ('{', 'two layers named `c1` in one scope'),
    '121-graph-19': ('"', '`name` must be a non-empty string without `/`, and not `input`'),
    '122-graph-20': ('9', '`cbr` takes 2 argument(s) (k, size), got 3'),
    '123-graph-21': ('q', '`cbr` has no argument `q`'),
    '124-graph-22': ('{', 'block `cbr` needs `k` (params: k, size)'),
    '125-graph-23': ('"', 'unknown parameter `$kk`'),
    '126-graph-24': ('{ conv2d', 'shape error at conv2d_1: conv2d needs an image (HxWxC)'),
    '127-graph-25': ('{ dense', 'shape error at dense_1: dense needs a flat input, got 8x8x8'),
    '128-graph-26': ('{', 'shape error at maxpool_1: window 40x40 does not fit input'),
    '129-graph-27': ('{', 'shape error at conv2d_1: kernel 30x30 does not fit input'),
    '130-graph-28': ('{', 'shape error at concat_1: concat needs at least two inputs,'),
    '131-graph-29': ('{', 'shape error at add_1: add inputs 16x16 (4 channels) and'),
    '132-graph-30': ('"k"]', 'parameter `k` is listed twice in `params`'),
    '133-graph-31': ('""', 'a parameter name must not be empty'),
    '134-graph-32': ('nope', 'default for `nope`, which is not in `params`'),
    '135-graph-33': ('old', 'unknown key `old`'),
    '136-graph-34': ('layers2', 'unknown key `layers2`'),
    '137-graph-35': ('3', '`relu` takes 0 argument(s) (), got 1'),
    '138-graph-36': ('0', '`filters` must be > 0'),
    '139-graph-37': ('0', '`stride` must be > 0'),
    '140-graph-38': ('"', 'stage name "bad\\u{1}name" must be 1 to 100 characters, none'),
    '141-graph-39': ('"', 'stage name "" must be 1 to 100 characters, none of them'),
    '142-graph-40': ('xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx', 'stage name'),
    '143-graph-41': ('"', '`name` must not be empty'),
    '144-graph-42': ('"missing', '`extends` names a file that does not exist: missing.toml'),
    '145-graph-43': ('"missing', '`include` names a file that does not exist: missing.toml'),
    '146-graph-44': ('3', 'wrong type: `include` must be a path or a list of paths,'),
    '147-graph-45': ('"tpu', 'unknown value `tpu`'),
    '148-graph-46': ('"tensorflow', 'unknown value `tensorflow`'),
    '149-graph-47': ('"jax', 'unknown value `jax`'),
    '150-syntax-00': ('\n', 'invalid TOML: string values must be quoted, expected'),
    '151-syntax-01': ('epochs = 3', 'invalid TOML: duplicate key'),
    '152-syntax-02': ('\n', 'invalid TOML: invalid basic string, expected `"`'),
    '153-syntax-03': ('\n', 'invalid TOML: unclosed array, expected `]`'),
    '154-syntax-04': ('\n', 'invalid TOML: unclosed table, expected `]`'),
    '155-syntax-05': ('layers', 'invalid TOML: missing comma between key-value pairs,'),
    '156-syntax-06': ('.1', 'invalid TOML: invalid float, expected nothing'),
    '157-syntax-07': ('= ', 'invalid TOML: extra `=`, expected nothing'),
    '158-syntax-08': ('train', 'invalid TOML: duplicate key'),
    '159-syntax-09': (',\n', 'invalid TOML: unexpected key or value, expected newline, `#`'),
    '160-syntax-10': ('\n', "invalid TOML: invalid literal string, expected `'`"),
    '161-late-00': ('[16, 16, 3]', 'wrong length: expected 2 element(s), found 3'),
    '162-late-01': ('[16, 16, 16]', 'wrong length: expected 2 element(s), found 3'),
    '163-late-02': ('[1, 0.001, 7]', 'wrong length: expected 2 element(s), found 3'),
    '164-late-03': ('"drop@2"', 'holds `@`, which `from = "stage@epoch"` reserves'),
    '165-late-04': ('epochs', 'is more than the 100000 a stage may train'),
    '166-late-05': ('epochs', 'is more than the 100000 a stage may train'),
    '167-late-06': ('batch_size', 'is more than the 65536 a batch may hold'),
    '168-late-07': ('^input = [', 'network `tiny` takes 16x16x3 images'),
    '169-late-08': ('^classes = 3\nlayers', 'network `tiny` outputs 3 classes, but stage `train` trains on 4'),
    '170-late-09': ('^input = [', 'but stage `train` gets 32x32x3 RGB images from `hdf5`'),
    '171-sweep-00': ('"train.lrr"', 'unknown key `lrr` (in sweep point `lrr=0.1`)'),
    '172-sweep-01': ('"trian.lr"', '`trian` is neither a stage of this pipeline nor a top-level key'),
    '173-sweep-02': ('"seven"', 'wrong type: expected usize, found string "seven" (in sweep point `epochs=seven`)'),
    '174-sweep-03': ('"train.lr"', '`lr` must be > 0 (in sweep point `lr=-1`)'),
    '175-sweep-04': ('[]', '`train.lr` sweeps an empty list'),
    '176-sweep-05': ('"drop.lr"', 'zipped lists must have one length'),
    '177-sweep-06': ('0.1]', 'two points of the sweep are identical (lr=0.1)'),
    '178-sweep-07': ('"hdf5"', 'halving rung `hdf5` is not a training stage'),
    '179-sweep-08': ('"train"]', 'halving rung `train` does not continue `drop`'),
    '180-sweep-09': ('sweep]\nmax', 'the sweep has 6 points, more than `max_points` = 5'),
    '181-sweep-10': ('{ normal', '`train.lr` needs a distribution'),
    '182-sweep-11': ('[0.0', '`log_uniform` needs a range above 0'),
    '183-sweep-12': ('0.1\n', 'wrong type: `train.lr` needs a list of values to sweep'),
    '184-sweep-13': ('gird', 'unknown key `gird`'),
    '185-bound-00': ('^{ conv2d', 'conv2d has too many output values (8 x 8 x 9223372036854775807'),
    '186-bound-01': ('^' + ', '.join(['{ relu = {} }'] * 8) + ']', 'the network expands to more than 100000 layers'),
    '187-bound-02': ('^d7 = []', 'blocks nested more than 32 deep'),
    '188-bound-03': ('^sweep.grid]', 'the sweep has 18446744073709551616 points, more than `max_points` = 1000'),
    '189-bound-05': ('top_k', 'each once, in increasing order (e.g. [1, 5]), got [2, 1, 1]'),
    '190-bound-06': ('"."', '`extends` names a folder, not a manifest file: .'),
    '191-bound-07': ('^[stages.evaluate.k0', 'invalid TOML: recursion limit'),
    '192-bound-04': ('1000000000\n', '`max_points` must be a whole number from 1 to 100000'),
    '193-quiet-00': ('regg', 'parameter `regg` of network `tiny` is named by no layer'),
    '194-quiet-03': ('steps', "epoch 5 is past the stage's last"),
    '195-quiet-04': ('steps', 'its lr 0 must be > 0'),
    '196-quiet-06': ('beta2', '`beta2` = 1.5 must be in [0, 1)'),
    '197-quiet-08': ('5 }', 'maxpool `padding` = 5 must be at most half the 2x2 window'),
    '198-quiet-09': ('9223372036854775807', 'conv2d `padding` = 9223372036854775807 must be less than the 3x3 kernel'),
    '199-quiet-10': ('{ name = "dead"', 'layer `dead` feeds no layer'),
    '200-quiet-11': ('5.0', 'batchnorm `momentum` = 5 must be in [0, 1)'),
    '201-quiet-12': ('"train@1"', 'keeps checkpoints at epochs 2'),
    '202-quiet-13': ('train_per_class', 'images is more than the 100000000 a synthetic dataset may generate'),
    '203-sweep-14': ('"train", "drop"]', 'halving rung `train` is the same in every point'),
}


def location(text, start, at):
    """1-based (line, col) of `at` in `text`, searched from `start`."""
    if at.startswith("^"):
        at, start = at[1:], 0
    i = text.find(at, start)
    assert i >= 0, (at, start)
    line = text.count("\n", 0, i) + 1
    col = i - (text.rfind("\n", 0, i) + 1) + 1
    return line, col


out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "broken")
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)
assert len(EXPECT) == len(cases), "every case needs its expectation"
for i, (desc, text, start) in enumerate(cases):
    stem = f"{i:03}-{desc}"
    with open(os.path.join(out, f"{stem}.toml"), "w", encoding="utf-8") as f:
        f.write(text)
    at, phrase = EXPECT[stem]
    line, col = location(text, start, at)
    with open(os.path.join(out, f"{stem}.expect"), "w", encoding="utf-8") as f:
        f.write(f"{line}:{col}\n{phrase}\n")
# One file that is not UTF-8: the bad byte is the 15th character of line 2.
stem = f"{len(cases):03}-not-utf8"
with open(os.path.join(out, f"{stem}.toml"), "wb") as f:
    f.write(BASE.replace("seed = 3", "seed = 3 # caf\xe9").encode("latin-1"))
with open(os.path.join(out, f"{stem}.expect"), "w", encoding="utf-8") as f:
    f.write("2:15\nthe file is not valid UTF-8\n")
print(f"{len(cases) + 1} broken manifests in {out}")
