//! The `pipe` command line: parses arguments and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use pipe::backend::{BackendKind, DeviceKind};
use pipe::commands::{self, DemoLayout, Global};
use pipe::engine::executor::{Executor, SlurmOptions};
use pipe::engine::RunOptions;
use pipe::manifest::Tta;

#[derive(Parser)]
#[command(
    name = "pipe",
    version,
    about = "Deep-learning experiments as cached TOML pipelines"
)]
struct Cli {
    /// Cache (artifact store) folder [default: $PIPE_CACHE, else .pipe beside pipelines/]
    #[arg(long, global = true, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Remote cache: s3://bucket/prefix, gs://, az://, https:// (WebDAV) or file:///path
    /// [default: $PIPE_REMOTE, else [remote] url in pipe.toml; `none`: no remote]. With
    /// `verify`, alone: check the remote rather than the store
    #[arg(long, global = true, value_name = "URL", num_args = 0..=1, default_missing_value = "")]
    remote: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a pipeline: only the stages whose inputs changed
    Run(RunArgs),
    /// Decide a sweep's halving rung and submit the next (what a promotion job runs)
    #[command(hide = true)]
    SweepPromote {
        /// The sweep's manifest
        manifest: String,
        /// The rung just finished (0 = the first)
        #[arg(long)]
        rung: usize,
        /// What the sweep was submitted over (a manifest changed since is refused)
        #[arg(long)]
        about: Option<String>,
        /// Overrides, as for `run`
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// The partition for the jobs it submits
        #[arg(long)]
        partition: Option<String>,
        /// GPUs for each training and evaluation job
        #[arg(long)]
        gpus_per_stage: Option<u32>,
    },
    /// Run one stage whose inputs are in the store (what an executor's job runs)
    #[command(hide = true)]
    RunStage {
        /// Manifest path
        manifest: String,
        /// Stage name
        stage: String,
        /// Override a key, as for `run`
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// The store whose journal hears how the job went (the submitter's, when the job
        /// has a store of its own)
        #[arg(long, value_name = "STORE")]
        journal_to: Option<PathBuf>,
        /// The stage's recipe as the submitting run decided it: refused when the manifest
        /// makes another now
        #[arg(long, value_name = "HEX")]
        recipe: Option<String>,
    },
    /// Pipelines side by side: schedules, final metrics, ranks, size, time, state
    Show {
        /// Pipelines (default: every manifest in pipelines/)
        pipelines: Vec<String>,
        /// Sort best first by a metric: val.acc, val.loss, rank1, <stage>.rank1, <split>.rank5, time, params, ...
        #[arg(long, value_name = "METRIC")]
        sort: Option<String>,
        /// Override a key in every pipeline, as for `run`
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Print JSON
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// Print CSV
        #[arg(long)]
        csv: bool,
    },
    /// Compare two pipelines (config, network layers, metrics), or one with its last run
    Diff {
        /// A pipeline
        a: String,
        /// Another pipeline (default: A's last run in the store)
        b: Option<String>,
        /// Override a key in both, as for `run`
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// The run journal: every recorded run, newest first, with what changed since the
    /// pipeline's previous run
    Runs {
        /// Pipelines or sweeps (default: every run)
        names: Vec<String>,
        /// Only runs that meet every condition: `lr<1e-2`, `val.acc>=0.9`, `state=done`,
        /// `tag=baseline` (config keys, metrics, pipeline, state, tag, backend, device)
        #[arg(long = "where", value_name = "EXPR")]
        filter: Option<String>,
        /// Only runs started since: `30m`, `12h`, `3d`, `2w`, a date or an RFC 3339 time
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// At most this many runs (the newest)
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Print JSON (whole records)
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// Print CSV (one column per metric and configuration key)
        #[arg(long)]
        csv: bool,
        /// Write TensorBoard event files of the selected runs into DIR
        #[arg(long, value_name = "DIR", conflicts_with_all = ["json", "csv"])]
        tensorboard: Option<PathBuf>,
    },
    /// Tag a recorded run (`pipe runs --where tag=TEXT` finds it)
    Tag {
        /// A run: its id, `PIPELINE~N` (N runs before the latest) or `PIPELINE@ID-PREFIX`
        run: String,
        /// The tag
        text: String,
    },
    /// Add a note to a recorded run
    Note {
        /// A run: its id, `PIPELINE~N` or `PIPELINE@ID-PREFIX`
        run: String,
        /// The note
        text: String,
    },
    /// Which stages are cached or stale, and why (a sweep: as a tree)
    Status {
        /// Pipeline name, alias, or manifest path; a sweep, or a sweep's point `SWEEP@ID`
        pipeline: String,
        /// Override a key, as for `run`
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
        /// A sweep: only the points this selects, as for `run`
        #[arg(long, value_name = "EXPR")]
        only: Option<String>,
    },
    /// Print the stage graph
    Dag {
        /// Pipeline name, alias, or manifest path
        pipeline: String,
        /// Override a key, as for `run`
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Graphviz output
        #[arg(long)]
        dot: bool,
    },
    /// Summarise a pipeline's networks: layers, output shapes, parameters, MACs
    Graph {
        /// Pipeline name, alias, or manifest path
        pipeline: String,
        /// Only this network
        #[arg(long)]
        network: Option<String>,
        /// Override a key, as for `run`
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Keep the kernel's file events over the dataset folders that runs ask about, so a
    /// run where nothing changed need not look at each file (Linux; until stopped)
    Watch,
    /// Remove what no manifest of the store's projects uses, and damaged artifacts (prints the list first)
    Gc {
        /// The folder of the manifests that use the store (default: the projects the store
        /// recorded, else `pipelines/` beside the store)
        #[arg(long, value_name = "DIR")]
        pipelines: Option<PathBuf>,
        /// Print what would be removed; remove nothing
        #[arg(long)]
        dry_run: bool,
        /// Also drop the recorded runs of pipelines whose manifest is not found
        #[arg(long)]
        all: bool,
        /// Keep what the last N runs of each pipeline in the journal made (`pipe runs`)
        #[arg(long, value_name = "N", default_value_t = 5)]
        keep_runs: usize,
    },
    /// Re-hash artifacts against what was published and report any damage
    Verify {
        /// Only the artifacts of this pipeline's last run (default: the whole store)
        pipeline: Option<String>,
        /// With --remote: upload again each damaged artifact this store holds sound
        #[arg(long)]
        repair: bool,
    },
    /// Upload what pipelines' current manifests use, and the run records, to the remote
    Push {
        /// Pipelines or sweeps (default: every manifest in pipelines/)
        pipelines: Vec<String>,
    },
    /// Download from the remote what pipelines' current manifests need, and the run records
    Pull {
        /// Pipelines or sweeps (default: every manifest in pipelines/)
        pipelines: Vec<String>,
        /// Only the last training stage and the evaluations (what `pipe predict` and
        /// `pipe show` read), not the data stages before them
        #[arg(long)]
        only_final: bool,
    },
    /// Classify images with a trained stage: one line per image, its top-k classes
    Predict {
        /// Pipeline (name, alias, path or sweep point), optionally `:STAGE` (default: its
        /// last training stage)
        target: String,
        /// Image files, folders (searched for .jpg/.jpeg/.png), or `-` for paths on stdin
        #[arg(required = true)]
        inputs: Vec<String>,
        /// Classes per image (default: 5, or every class of a model with fewer)
        #[arg(long)]
        top_k: Option<usize>,
        /// One JSON object per line
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// CSV
        #[arg(long)]
        csv: bool,
        /// Images per forward pass
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// Device (default: the GPU where this build and machine have one, else the CPU)
        #[arg(long, value_enum)]
        device: Option<DeviceKind>,
        /// Skip images that do not decode (each named in the summary, and a row of its
        /// own in JSON and CSV) instead of failing
        #[arg(long)]
        skip_bad: bool,
        /// The most pixels an image may have; a larger one (a decompression bomb) is
        /// refused from its header
        #[arg(long, default_value_t = pipe::data::decode::MAX_PIXELS)]
        max_pixels: u64,
        /// With `-`: paths on stdin are separated by NUL bytes (`find -print0`), not lines
        #[arg(short = '0', long = "null")]
        nul: bool,
        /// Test-time augmentation: `flip` averages each image's class probabilities with
        /// its mirror's
        #[arg(long, value_enum, default_value_t = Tta::None)]
        tta: Tta,
    },
    /// Write a trained stage as an ONNX model (opset 17) for other runtimes
    Export {
        /// Pipeline (name, alias, path or sweep point), optionally `:STAGE` (default: its
        /// last training stage)
        target: String,
        /// The file to write (`-`: stdout); replaced atomically, never half-written
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// `flip`: the graph averages each image's class probabilities with its mirror's
        #[arg(long, value_enum, default_value_t = Tta::None)]
        tta: Tta,
    },
    /// A dashboard of the project's runs in the browser (read-only; loopback unless --bind)
    Ui {
        /// Port to listen on (0: any free port)
        #[arg(long, default_value_t = 8765)]
        port: u16,
        /// Address (or host name, e.g. localhost) to listen on; anything but loopback lets
        /// other machines read the runs
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
        /// Also answer requests whose Host header is NAME (a name this machine is reached
        /// by); loopback names and the bound address are always answered. Repeatable
        #[arg(long = "allow-host", value_name = "NAME")]
        allow_host: Vec<String>,
        /// Open it in the browser (xdg-open)
        #[arg(long)]
        open: bool,
        /// Write the pages as static HTML and SVG into DIR instead of serving them
        #[arg(long, value_name = "DIR")]
        export: Option<PathBuf>,
    },
    /// Benchmarks (numbers for docs/performance.md)
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
    /// Write a generated dataset (real JPEGs or CIFAR batches) in a real layout
    DemoData {
        /// Output folder
        dir: PathBuf,
        /// Layout to write
        #[arg(long, value_enum, default_value_t = Layout::TinyImagenet)]
        layout: Layout,
        /// Number of classes (cifar10: always 10)
        #[arg(long, default_value_t = 10)]
        classes: usize,
        /// Train images per class (cifar10: records per batch file)
        #[arg(long, default_value_t = 100)]
        per_class: usize,
        /// Val images per class (tiny-imagenet)
        #[arg(long, default_value_t = 10)]
        val_per_class: usize,
        /// Image side in pixels (cifar10: always 32)
        #[arg(long, default_value_t = 64)]
        size: u32,
        /// Generator seed
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExecutorArg {
    /// Parallel processes on this machine (`-j N`)
    Local,
    /// Slurm batch jobs (`sbatch`), dependencies mirroring the DAG
    Slurm,
}

/// `pipe run`'s options.
#[derive(clap::Args)]
struct RunArgs {
    /// Pipeline name, alias, or manifest path
    #[arg(required_unless_present = "from")]
    pipeline: Option<String>,
    /// Re-run a recorded run's exact configuration (its id, `PIPELINE~N` or
    /// `PIPELINE@ID-PREFIX`): its manifest text and overrides as recorded, even after the
    /// manifest was edited
    #[arg(long, value_name = "RUN", conflicts_with_all = ["pipeline", "sets", "only"])]
    from: Option<String>,
    /// Override a key: STAGE.KEY=VALUE or KEY=VALUE (TOML value; bare text is a string)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Re-run this stage even if cached (repeatable)
    #[arg(long, value_name = "STAGE")]
    force: Vec<String>,
    /// Run only this stage and what it depends on
    #[arg(long, value_name = "STAGE")]
    until: Option<String>,
    /// Say what would run; run nothing
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON object describing every stage (on stdout)
    #[arg(long)]
    json: bool,
    /// Where stages run: in this process (default), as parallel local processes
    /// (`local`, with -j), or as Slurm jobs (`slurm`)
    #[arg(long, value_enum)]
    executor: Option<ExecutorArg>,
    /// With `--executor local`: stages run at once
    /// (`-j` alone implies `--executor local`)
    #[arg(short = 'j', long)]
    jobs: Option<usize>,
    /// With `--executor slurm`: the partition for every job
    #[arg(long)]
    partition: Option<String>,
    /// With `--executor slurm`: GPUs for each training and evaluation job
    #[arg(long)]
    gpus_per_stage: Option<u32>,
    /// With `--executor slurm`: wait for the jobs and report how they ended
    #[arg(long)]
    wait: bool,
    /// With `--executor slurm` and a remote: each job's own store, on its node's disk
    /// (e.g. `/scratch/$USER/pipe`; `$VARS` expand in the job). Jobs pull their inputs
    /// from the remote and push their outputs; no shared filesystem holds artifacts
    #[arg(long, value_name = "PATH")]
    job_store: Option<String>,
    /// The most memory a training may need, e.g. `8G`, `512M` (default: what this machine
    /// has available); a training estimated to need more is refused before it starts
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_memory: Option<u64>,
    /// A sweep: run only the points this selects (`lr=5e-3`, `lr<1e-2`, `act=elu,lr>=1e-3`),
    /// each whole (halving does not prune them)
    #[arg(long, value_name = "EXPR")]
    only: Option<String>,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// ingest + split + hdf5 throughput and no-op re-run time (walking, and with `pipe watch`) on a generated Tiny-ImageNet tree
    Data {
        /// Classes
        #[arg(long, default_value_t = 200)]
        classes: usize,
        /// Train images per class
        #[arg(long, default_value_t = 550)]
        per_class: usize,
        /// Val images per class
        #[arg(long, default_value_t = 50)]
        val_per_class: usize,
        /// Keep (and reuse) the generated tree in this folder
        #[arg(long)]
        keep: Option<PathBuf>,
        /// A `dvc` executable: time `dvc status` over the same tree beside each no-op
        /// (`python3 -m venv dvc-venv && dvc-venv/bin/pip install dvc`)
        #[arg(long)]
        dvc: Option<PathBuf>,
        /// Cold runs (each on an empty store); the median is reported
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
        cold_runs: u64,
    },
    /// The run journal over many records: `pipe runs`, the journal page, and what writing
    /// a record adds to a no-op run
    Journal {
        /// Records in the journal
        #[arg(long, default_value_t = 10_000)]
        records: usize,
        /// Timed rounds of each
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// The remote cache: one artifact pushed and fetched (against `--remote URL`, or the
    /// project's remote), in MB/s
    Remote {
        /// The artifact's size, MiB
        #[arg(long, default_value_t = 200)]
        mb: usize,
        /// Rounds (each a push and a fetch)
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Training steps of MiniGoogLeNet (batch 64, 32x32) and DeeperGoogLeNet (batch 64, 64x64)
    /// on each backend and in PyTorch, in alternating rounds: medians of images/s and peak RSS
    Train {
        /// Batch size
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Timed steps per round (after one warm-up step)
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Rounds; each runs every engine once, in turn
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Networks to time
        #[arg(long, value_enum, default_values_t = [BenchNet::Mini, BenchNet::Deeper])]
        network: Vec<BenchNet>,
        /// Backends to time (PyTorch runs too when `--python` has torch)
        #[arg(long, value_enum, default_values_t = [BackendKind::Native, BackendKind::Dfdx])]
        backend: Vec<BackendKind>,
        /// Python with torch for the comparison
        #[arg(long, default_value = "python3")]
        python: String,
        /// Device to train on
        #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
        device: DeviceKind,
        /// Instead: what each training recipe feature (label smoothing, mixup, CutMix,
        /// cutout, EMA, AdamW, decoupled decay) adds to a native CPU step of the first
        /// --network, against the plain SGD step, in rotating rounds
        #[arg(long)]
        recipes: bool,
    },
    /// One timed run of one engine, in this process (what `bench train` runs per round);
    /// prints JSON with images/s and the peak RSS
    Step {
        /// Network
        #[arg(long, value_enum)]
        network: BenchNet,
        /// Backend
        #[arg(long, value_enum)]
        backend: BackendKind,
        /// Batch size
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Timed steps (after one warm-up step)
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Device to train on
        #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
        device: DeviceKind,
    },
    /// `--dry-run` of a VALUES³-point grid over the demo pipeline, every key planned:
    /// median whole-process time
    Sweep {
        /// Values per swept key (train.lr, drop.lr, train.batch_size)
        #[arg(long, default_value_t = 10)]
        values: usize,
        /// Timed runs
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// A sweep of 8 points of a small network on generated data, in one process and with
    /// `-j N`, each on a fresh store, in alternating rounds: median wall times
    Jobs {
        /// Workers of the parallel runs
        #[arg(short = 'j', long, default_value_t = 2)]
        jobs: usize,
        /// Rounds; each runs both once
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Training images per class (10 classes)
        #[arg(long, default_value_t = 300)]
        per_class: usize,
        /// Epochs of each training
        #[arg(long, default_value_t = 3)]
        epochs: usize,
    },
    /// `pipe ui` over RUNS trained runs: the runs page's time, and how soon an epoch
    /// written by another process reaches an open page
    Ui {
        /// Runs in the store
        #[arg(long, default_value_t = 1000)]
        runs: usize,
        /// Requests timed
        #[arg(long, default_value_t = 20)]
        rounds: usize,
    },
    /// `pipe predict` with a trained MiniGoogLeNet on IMAGES new 32x32 JPEGs against PyTorch
    /// running the same weights on the same files, in alternating rounds: medians of images/s
    Predict {
        /// Images to classify
        #[arg(long, default_value_t = 10_000)]
        images: usize,
        /// Images per forward pass
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// Rounds; each runs both engines once, in turn
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Python with torch, numpy, pillow and safetensors for the comparison
        #[arg(long, default_value = "python3")]
        python: String,
    },
    /// One MiniGoogLeNet SGD and Adam step from the same weights on native-CPU, native-CUDA and dfdx-CUDA: parity check
    Parity {
        /// Batch size
        #[arg(long, default_value_t = 64)]
        batch: usize,
    },
}

/// A network `pipe bench train` times.
#[derive(Clone, Copy, ValueEnum, Debug, PartialEq)]
enum BenchNet {
    /// MiniGoogLeNet, 32x32x3 input
    Mini,
    /// DeeperGoogLeNet, 64x64x3 input
    Deeper,
    /// The demo pipeline's network, 32x32x3 input
    Demo,
}

impl BenchNet {
    fn name(self) -> &'static str {
        match self {
            BenchNet::Mini => "mini",
            BenchNet::Deeper => "deeper",
            BenchNet::Demo => "demo",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Layout {
    TinyImagenet,
    Cifar10,
    ImageFolder,
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`pipe dag x | head -1`) would
    // panic; restore the default and end quietly, as cat, ripgrep and cargo do.
    #[cfg(unix)]
    // SAFETY: setting a signal disposition to its default at start-up, before any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let g = Global {
        cache: cli.cache,
        remote: cli.remote,
    };
    let result = dispatch(g, cli.cmd);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `pipe bench ...`.
fn bench(what: BenchCmd, remote: Option<String>) -> anyhow::Result<()> {
    match what {
        BenchCmd::Data {
            classes,
            per_class,
            val_per_class,
            keep,
            dvc,
            cold_runs,
        } => commands::bench_data(
            classes,
            per_class,
            val_per_class,
            keep.as_deref(),
            dvc.as_deref(),
            cold_runs as usize,
        ),
        BenchCmd::Train {
            batch,
            steps,
            rounds,
            network,
            recipes: true,
            ..
        } => commands::bench_recipes(network[0].name(), batch, steps.max(1), rounds.max(1)),
        BenchCmd::Train {
            batch,
            steps,
            rounds,
            network,
            backend,
            python,
            device,
            recipes: false,
        } => commands::bench_train(&commands::BenchTrain {
            batch,
            steps,
            rounds,
            networks: network.iter().map(|n| n.name()).collect(),
            backends: backend,
            python: &python,
            device,
        }),
        BenchCmd::Step {
            network,
            backend,
            batch,
            steps,
            device,
        } => commands::bench_step(network.name(), backend, batch, steps, device),
        BenchCmd::Sweep { values, rounds } => commands::bench_sweep(values, rounds),
        BenchCmd::Jobs {
            jobs,
            rounds,
            per_class,
            epochs,
        } => commands::bench_jobs(jobs, rounds, per_class, epochs),
        BenchCmd::Ui { runs, rounds } => commands::bench_ui(runs, rounds),
        BenchCmd::Journal { records, rounds } => commands::bench_journal(records, rounds),
        BenchCmd::Remote { mb, rounds } => commands::bench_remote(remote.as_deref(), mb, rounds),
        BenchCmd::Predict {
            images,
            batch,
            rounds,
            python,
        } => commands::bench_predict(&commands::BenchPredict {
            images,
            batch,
            rounds,
            python: &python,
        }),
        BenchCmd::Parity { batch } => commands::bench_parity(batch),
    }
}

/// Each verb to its command.
fn dispatch(g: Global, cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Run(args) => run(&g, args),
        Cmd::SweepPromote {
            manifest,
            rung,
            about,
            sets,
            partition,
            gpus_per_stage,
        } => commands::sweep_promote(
            &g,
            &manifest,
            rung,
            about.as_deref(),
            &sets,
            &SlurmOptions {
                partition,
                gpus_per_stage,
                wait: false,
                job_store: None,
            },
        ),
        Cmd::RunStage {
            manifest,
            stage,
            sets,
            journal_to,
            recipe,
        } => commands::run_stage(
            &g,
            &manifest,
            &stage,
            &sets,
            journal_to.as_deref(),
            recipe.as_deref(),
        ),
        Cmd::Runs {
            names,
            filter,
            since,
            limit,
            json,
            csv,
            tensorboard,
        } => commands::runs(
            &g,
            &commands::RunsOptions {
                names,
                filter,
                since,
                limit,
                json,
                csv,
                tensorboard,
            },
        ),
        Cmd::Tag { run, text } => commands::annotate(&g, &run, "tag", &text),
        Cmd::Note { run, text } => commands::annotate(&g, &run, "note", &text),
        Cmd::Status {
            pipeline,
            sets,
            json,
            only,
        } => commands::status(&g, &pipeline, &sets, json, only.as_deref()),
        Cmd::Show {
            pipelines,
            sort,
            sets,
            json,
            csv,
        } => commands::show(
            &g,
            &pipelines,
            &sets,
            sort.as_deref(),
            if json {
                commands::ShowFormat::Json
            } else if csv {
                commands::ShowFormat::Csv
            } else {
                commands::ShowFormat::Table
            },
        ),
        Cmd::Diff { a, b, sets, json } => commands::diff(&g, &a, b.as_deref(), &sets, json),
        Cmd::Dag {
            pipeline,
            sets,
            dot,
        } => commands::dag(&g, &pipeline, &sets, dot),
        Cmd::Graph {
            pipeline,
            network,
            sets,
            json,
        } => commands::graph(&g, &pipeline, &sets, network.as_deref(), json),
        Cmd::Watch => commands::watch(&g),
        Cmd::Gc {
            pipelines,
            dry_run,
            all,
            keep_runs,
        } => commands::gc(&g, pipelines, dry_run, all, keep_runs),
        // `pipe verify --remote [URL]`: every artifact in the remote cache.
        Cmd::Verify { repair, .. } if g.remote.is_some() => commands::verify_remote(&g, repair),
        Cmd::Verify { repair: true, .. } => {
            anyhow::bail!("--repair mends the remote cache: give --remote (or set one)")
        }
        Cmd::Verify { pipeline, .. } => commands::verify(&g, pipeline.as_deref()),
        Cmd::Push { pipelines } => commands::push(&g, &pipelines),
        Cmd::Pull {
            pipelines,
            only_final,
        } => commands::pull(&g, &pipelines, only_final),
        Cmd::Predict {
            target,
            inputs,
            top_k,
            json,
            csv,
            batch,
            device,
            skip_bad,
            max_pixels,
            nul,
            tta,
        } => commands::predict(
            &g,
            &target,
            &inputs,
            &commands::PredictOptions {
                top_k,
                format: if json {
                    commands::PredictFormat::Json
                } else if csv {
                    commands::PredictFormat::Csv
                } else {
                    commands::PredictFormat::Text
                },
                batch,
                device,
                skip_bad,
                max_pixels,
                nul,
                tta,
            },
        ),
        Cmd::Export {
            target,
            output,
            tta,
        } => commands::export(&g, &target, &output, tta),
        Cmd::Ui {
            port,
            bind,
            allow_host,
            open,
            export,
        } => commands::ui(&g, port, &bind, allow_host, open, export.as_deref()),
        Cmd::Bench { what } => bench(what, g.remote.clone()),
        Cmd::DemoData {
            dir,
            layout,
            classes,
            per_class,
            val_per_class,
            size,
            seed,
        } => commands::demo_data(
            &dir,
            match layout {
                Layout::TinyImagenet => DemoLayout::TinyImagenet,
                Layout::Cifar10 => DemoLayout::Cifar10,
                Layout::ImageFolder => DemoLayout::ImageFolder,
            },
            classes,
            per_class,
            val_per_class,
            size,
            seed,
        ),
    }
}

/// `pipe run`: in this process, or with an executor.
fn run(g: &Global, args: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        pipeline,
        sets,
        force,
        until,
        dry_run,
        json,
        executor,
        jobs,
        partition,
        gpus_per_stage,
        wait,
        job_store,
        max_memory,
        only,
        from,
    } = args;
    let opts = RunOptions {
        force,
        until,
        dry_run,
        max_memory,
    };
    if job_store.is_some() && executor != Some(ExecutorArg::Slurm) {
        anyhow::bail!("--job-store is for Slurm jobs: add --executor slurm");
    }
    let slurm = SlurmOptions {
        partition,
        gpus_per_stage,
        wait,
        job_store,
    };
    if let Some(from) = from {
        if executor.is_some() || jobs.is_some() {
            anyhow::bail!("--from re-runs in this process: leave out --executor and -j");
        }
        return commands::run_from(g, &from, opts, json);
    }
    let pipeline = pipeline.expect("clap requires PIPELINE without --from");
    match executor.or(jobs.map(|_| ExecutorArg::Local)) {
        None => commands::run(g, &pipeline, &sets, opts, json, only.as_deref()),
        Some(ExecutorArg::Local) => {
            let exec = Executor::Local {
                jobs: jobs.unwrap_or(2),
            };
            commands::run_with(g, &pipeline, &sets, opts, &exec, only.as_deref(), json)
        }
        Some(ExecutorArg::Slurm) => {
            let exec = Executor::Slurm(slurm);
            commands::run_with(g, &pipeline, &sets, opts, &exec, only.as_deref(), json)
        }
    }
}

/// A size as people write it: `4096`, `512K`, `512M`, `8G`, `1T` (powers of 1024; a `B` or
/// `iB` after the letter is allowed).
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        Some('T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: f64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a size (e.g. 8G, 512M, 4096)"))?;
    let bytes = n * (1u64 << shift) as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("`{text}` is not a size of at least one byte"));
    }
    Ok(bytes as u64)
}
