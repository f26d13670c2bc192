"""Generate tests/corpus/broken/*.toml: manifests that are each broken in one way.

Run from the repository root:  python3 tests/corpus/generate.py
`tests/corpus.rs` runs every file through `pipe run --dry-run` and `pipe graph` and checks
that each fails with an error located at file:line:col, and never panics.
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
    cases.append((desc, BASE.replace(old, new, count)))


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
    ("optimizer = \"sgd\"", "optimizer = \"adamw\""),
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
    ("lr = 0.01", "lr = 0.01\noptimizer = \"adam\"\nbeta1 = 1.0"),
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

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "broken")
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)
for i, (desc, text) in enumerate(cases):
    with open(os.path.join(out, f"{i:03}-{desc}.toml"), "w", encoding="utf-8") as f:
        f.write(text)
# One file that is not UTF-8.
with open(os.path.join(out, f"{len(cases):03}-not-utf8.toml"), "wb") as f:
    f.write(BASE.replace("seed = 3", "seed = 3 # caf\xe9").encode("latin-1"))
print(f"{len(cases) + 1} broken manifests in {out}")
