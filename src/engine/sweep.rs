//! Running a sweep: every point is a pipeline keyed as usual, so what points share (the
//! data stages; a first training segment that only a later lr differs in) has one key and
//! runs once. A failing point does not stop the others. Successive halving runs the points
//! rung by rung (a rung is a training segment) and, after each rung but the last, keeps the
//! best ⌈n/η⌉ by the metric (ties by point order); the decisions are recorded in the store
//! (`sweeps/<sweep>.json`) and the same results give the same decisions. A pruned point
//! stays cached: naming it later (`--only`, or its id) continues from where it stopped.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Result};

use super::executor::{Executor, SlurmOptions};
use super::journal::{entry_of, Journal, Recording, AWAITING, PRUNED};
use super::{Engine, RunOptions, WalkOptions};
use crate::ids::Recipe;
use crate::manifest::sweep::{Goal, Halving, Metric};
use crate::manifest::{Pipeline, Sweep};
use crate::outcome::sweep::{HalvingDecisions, PointResult, Rung, SharedStage, SweepRun};
use crate::outcome::{StageOutcome, StageState};
use crate::stages;

/// How one condition of `--only` compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    /// Each operator as written, longest first where one starts another.
    const WRITTEN: [(&'static str, Op); 6] = [
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("!=", Op::Ne),
        ("=", Op::Eq),
        ("<", Op::Lt),
        (">", Op::Gt),
    ];

    /// Whether `a OP b` holds for numbers.
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Eq => a == b,
            Op::Ne => a != b,
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Gt => a > b,
            Op::Ge => a >= b,
        }
    }
}

/// One comparison of `--only` (and `runs --where`): `lr=5e-3`, `lr<1e-2`, `act!=elu`.
#[derive(Debug, Clone)]
pub struct Condition {
    /// The key as written.
    pub key: String,
    op: Op,
    /// The value as written.
    pub value: String,
}

impl Condition {
    /// Whether it is a `!=`: a condition on a list (a run's tags) then holds when no
    /// item is the value.
    pub fn negated(&self) -> bool {
        self.op == Op::Ne
    }

    /// Whether a value (as shown, and as a number when it is one) meets it: numbers
    /// compare as numbers; otherwise only `=` and `!=` hold, on the text.
    pub fn holds(&self, shown: &str) -> bool {
        let a = shown.trim_matches('"').parse::<f64>().ok();
        match (self.op, a, self.value.parse::<f64>().ok()) {
            (op, Some(a), Some(b)) => op.holds(a, b),
            (Op::Eq, _, _) => shown.trim_matches('"') == self.value,
            (Op::Ne, _, _) => shown.trim_matches('"') != self.value,
            _ => false,
        }
    }
}

/// `--only`'s (and `--where`'s) conditions: comma-separated comparisons; `flag` names
/// the option in errors.
pub fn parse_conditions(expr: &str, flag: &str) -> Result<Vec<Condition>> {
    let mut out = Vec::new();
    for part in expr.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((at, written, op)) = Op::WRITTEN
            .iter()
            .filter_map(|(w, op)| part.find(w).map(|i| (i, *w, *op)))
            .min_by_key(|(i, w, _)| (*i, usize::MAX - w.len()))
        else {
            bail!("{flag} `{part}`: expected KEY=VALUE, KEY<VALUE, KEY<=VALUE, KEY>VALUE, KEY>=VALUE or KEY!=VALUE");
        };
        out.push(Condition {
            key: part[..at].trim().to_string(),
            op,
            value: part[at + written.len()..].trim().to_string(),
        });
    }
    if out.is_empty() {
        bail!("{flag}: no condition given");
    }
    Ok(out)
}

/// The points `--only EXPR` selects (every point without it), in order.
pub fn select(s: &Sweep, only: Option<&str>) -> Result<Vec<usize>> {
    let Some(expr) = only else {
        return Ok((0..s.points.len()).collect());
    };
    let conds = parse_conditions(expr, "--only")?;
    for c in &conds {
        if !s
            .keys
            .iter()
            .any(|k| *k == c.key || s.short_key(k) == c.key)
        {
            bail!(
                "--only: `{}` is not a swept key of `{}` (swept: {})",
                c.key,
                s.name,
                s.keys
                    .iter()
                    .map(|k| s.short_key(k))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let mut out = Vec::new();
    for (i, pt) in s.points.iter().enumerate() {
        let ok = conds.iter().all(|c| {
            let Some((_, v)) = pt
                .values
                .iter()
                .find(|(k, _)| *k == c.key || s.short_key(k) == c.key)
            else {
                return false;
            };
            let shown = crate::manifest::sweep::id_value(v);
            let (a, b) = (v.as_f64(), c.value.parse::<f64>().ok());
            match (c.op, a, b) {
                (op, Some(a), Some(b)) => op.holds(a, b),
                (Op::Eq, _, _) => shown == c.value || v.as_str() == Some(c.value.as_str()),
                (Op::Ne, _, _) => shown != c.value && v.as_str() != Some(c.value.as_str()),
                _ => false,
            }
        });
        if ok {
            out.push(i);
        }
    }
    if out.is_empty() {
        bail!("--only `{expr}` selects no point of `{}`", s.name);
    }
    Ok(out)
}

/// A rung's metric from the artifact of a point's rung stage.
fn metric_of(dir: &std::path::Path, metric: Metric) -> Option<f64> {
    let last = stages::train::last_epoch(dir)?;
    // With a moving average of the weights, the average is the model evaluated and
    // served: it is what a rung ranks.
    Some(match metric {
        Metric::ValAcc => last.ema_val_acc.unwrap_or(last.val_acc),
        Metric::ValLoss => last.ema_val_loss.unwrap_or(last.val_loss),
        Metric::TrainAcc => last.train_acc,
        Metric::TrainLoss => last.train_loss,
    })
}

/// A point's stages over several runs (rung by rung): a stage that ran in any of them is
/// shown as ran.
fn merge(earlier: Vec<StageOutcome>, later: Vec<StageOutcome>) -> Vec<StageOutcome> {
    later
        .into_iter()
        .map(|o| match earlier.iter().find(|e| e.name == o.name) {
            Some(e) if e.state == StageState::Ran && o.state == StageState::Cached => e.clone(),
            _ => o,
        })
        .collect()
}

/// The points that go on after a rung: the best ⌈n/η⌉ by `metric` (`values` in point
/// order; ties go to the earlier point). A NaN (a diverged training) is worst, whatever
/// the goal.
pub fn promote(values: &[(String, f64)], h: &Halving) -> Vec<String> {
    let keep = values.len().div_ceil(h.eta).max(1);
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (values[a].1, values[b].1);
        let by = match h.goal {
            Goal::Max => y.total_cmp(&x),
            Goal::Min => x.total_cmp(&y),
        };
        x.is_nan().cmp(&y.is_nan()).then(by).then(a.cmp(&b))
    });
    order
        .into_iter()
        .take(keep)
        .map(|i| values[i].0.clone())
        .collect()
}

impl Engine {
    /// The halving decisions of sweep `s`, as recorded (`<store>/sweeps/<sweep>.json`)
    /// when the record is sound and about the sweep's points as they are now. A record
    /// that does not read, whose seal does not match what it says, or that was sealed
    /// over other points is not trusted: the decisions are worked out again from the
    /// results in the store (as a run would decide them), with a warning when the file
    /// was damaged.
    pub fn decisions(&mut self, s: &Sweep) -> HalvingDecisions {
        let path = self.decisions_path(&s.name);
        let ids: Vec<String> = s.points.iter().map(|p| p.id.clone()).collect();
        let read: Result<Option<HalvingDecisions>> = super::store::read_json(&path);
        match read {
            Ok(None) => HalvingDecisions::default(),
            Ok(Some(d))
                if !d.seal.is_empty()
                    && d.seal == decisions_seal(&d)
                    && d.points == ids
                    && (d.about.is_empty() || d.about == decided_over(s)) =>
            {
                d
            }
            Ok(Some(d)) => {
                if !d.seal.is_empty() && d.seal != decisions_seal(&d) {
                    self.warn(format!(
                        "{}: its seal does not match what it says (edited or damaged); the halving decisions are worked out again from the results",
                        path.display()
                    ));
                }
                self.decide_from_results(s)
            }
            Err(e) => {
                self.warn(format!(
                    "{e:#}; the halving decisions are worked out again from the results"
                ));
                self.decide_from_results(s)
            }
        }
    }

    fn decisions_path(&self, sweep: &str) -> std::path::PathBuf {
        self.store
            .root()
            .join("sweeps")
            .join(format!("{}.json", super::store::state_stem(sweep)))
    }

    /// Halving's decisions from the results in the store alone: rung by rung, the points
    /// still live whose rung stage is cached are compared as a run compares them. A rung
    /// that not every live point has finished is not decided yet (neither are those after
    /// it).
    fn decide_from_results(&mut self, s: &Sweep) -> HalvingDecisions {
        let mut d = HalvingDecisions::default();
        let Some(h) = s.halving.clone() else {
            return d;
        };
        let mut live: Vec<usize> = (0..s.points.len()).collect();
        for rung in h.rungs.iter().take(h.rungs.len().saturating_sub(1)) {
            let mut values = Vec::new();
            for &i in &live {
                match self.rung_metric(&s.points[i].pipeline, rung, h.metric) {
                    Ok(Some(m)) => values.push((s.points[i].id.clone(), m)),
                    _ => return d,
                }
            }
            let kept = promote(&values, &h);
            live.retain(|&i| kept.contains(&s.points[i].id));
            d.rungs.push(rung_record(rung, &h, values, kept));
        }
        d
    }

    /// Record sweep `s`'s decisions, sealed over its points as they are now; the record
    /// as written (what `decisions` reads back).
    fn record_decisions(&self, s: &Sweep, d: HalvingDecisions) -> Result<HalvingDecisions> {
        let mut d = d;
        d.points = s.points.iter().map(|p| p.id.clone()).collect();
        d.about = decided_over(s);
        d.seal = decisions_seal(&d);
        if !self.store.is_read_only() {
            crate::atomic::write_json_atomic(&self.decisions_path(&s.name), &d)?;
        }
        Ok(d)
    }

    /// [`Self::record_decisions`] at the end of a run whose points have finished: a record
    /// that cannot be written (a full disk, a store's `sweeps/` not writable) is a
    /// warning, not the failure of points that ran. The decisions are worked out again
    /// from the results where it is missing.
    fn record_decisions_after_run(&self, s: &Sweep, d: HalvingDecisions) -> HalvingDecisions {
        match self.record_decisions(s, d.clone()) {
            Ok(d) => d,
            Err(e) => {
                // An older record left in place would be trusted over these results.
                let path = self.decisions_path(&s.name);
                let then = match std::fs::remove_file(&path) {
                    Err(r) if r.kind() != std::io::ErrorKind::NotFound => format!(
                        "; an older record at {} could not be removed ({r}) and may be shown instead",
                        path.display()
                    ),
                    _ => "; `status` and `show` work them out again from the results".into(),
                };
                self.warn(format!(
                    "{e:#}: the halving decisions of `{}` were not recorded{then}",
                    s.name
                ));
                d
            }
        }
    }

    /// Run one point, catching its failure (the error's first line).
    fn run_point(&mut self, p: &Pipeline, opts: &RunOptions) -> Result<Vec<StageOutcome>, String> {
        let what = match &opts.until {
            Some(u) => format!("== {} (until {u})", p.name),
            None => format!("== {}", p.name),
        };
        self.note(what);
        self.run(p, opts).map(|r| r.stages).map_err(|e| {
            let msg = format!("{e:#}");
            msg.lines().next().unwrap_or("").to_string()
        })
    }

    /// [`Engine::run_point`] under point `i`'s journal record (started on its first run
    /// in this sweep run; completed by [`Engine::finish_point`]).
    fn run_point_recorded(
        &mut self,
        i: usize,
        p: &Pipeline,
        opts: &RunOptions,
        recs: &mut HashMap<usize, Recording>,
        forced: &mut std::collections::HashSet<String>,
    ) -> Result<Vec<StageOutcome>, String> {
        // `--force` re-runs each forced stage once in the whole sweep: not again in a
        // later rung, nor for another point that shares it (the same key).
        let opts = &self.force_left(p, opts, forced);
        if !opts.dry_run && !recs.contains_key(&i) {
            match Journal::of(&self.store).begin(p, "in-process") {
                Ok(r) => {
                    recs.insert(i, r);
                }
                Err(e) => self.warn(format!(
                    "{}: this run is not recorded in the journal: {e:#}",
                    p.name
                )),
            }
        }
        self.recording = recs.remove(&i);
        let r = self.run_point(p, opts);
        if let Ok(st) = &r {
            for o in st.iter().filter(|o| o.state == StageState::Ran) {
                if let Some(k) = o.key.as_ref().filter(|_| opts.force.contains(&o.name)) {
                    forced.insert(k.to_string());
                }
            }
        }
        if let Some(mut rec) = self.recording.take() {
            if let Ok(st) = &r {
                rec.update(&st.iter().map(entry_of).collect::<Vec<_>>());
            }
            recs.insert(i, rec);
        }
        r
    }

    /// `opts` less the forced stages of `p` whose key was already forced in this sweep.
    fn force_left(
        &mut self,
        p: &Pipeline,
        opts: &RunOptions,
        forced: &std::collections::HashSet<String>,
    ) -> RunOptions {
        if opts.force.is_empty() || forced.is_empty() {
            return opts.clone();
        }
        let keys: HashMap<String, String> = self
            .decide(p, &WalkOptions::default())
            .map(|ds| {
                ds.into_iter()
                    .filter_map(|d| Some((d.outcome.name, d.outcome.key?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        RunOptions {
            force: opts
                .force
                .iter()
                .filter(|n| !keys.get(*n).is_some_and(|k| forced.contains(k)))
                .cloned()
                .collect(),
            ..opts.clone()
        }
    }

    /// Journal records for a sweep's points run by an executor, each with the stages
    /// cached before it (to tell what ran); none for a dry run.
    fn begin_point_records(
        &mut self,
        s: &Sweep,
        selected: &[usize],
        exec: &Executor,
        opts: &RunOptions,
    ) -> HashMap<usize, (Recording, Vec<String>)> {
        let mut out = HashMap::new();
        if opts.dry_run {
            return out;
        }
        for &i in selected {
            let p = &s.points[i].pipeline;
            if let Some(rec) = self.begin_record(p, exec) {
                let before = self.cached_stages(p);
                out.insert(i, (rec, before));
            }
        }
        out
    }

    /// The stages of `p` the store holds now.
    fn cached_stages(&mut self, p: &Pipeline) -> Vec<String> {
        self.status(p)
            .map(|st| {
                st.into_iter()
                    .filter(|o| o.state == StageState::Cached)
                    .map(|o| o.name)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The stages of `p` cached now that were not (`before`).
    fn ran_since(&mut self, p: &Pipeline, before: &[String]) -> Vec<String> {
        self.cached_stages(p)
            .into_iter()
            .filter(|n| !before.contains(n))
            .collect()
    }

    /// Complete point `i`'s record with how it ended.
    fn finish_point(
        &mut self,
        i: usize,
        res: &PointResult,
        stages: &[StageOutcome],
        recs: &mut HashMap<usize, Recording>,
    ) {
        let Some(rec) = recs.remove(&i) else { return };
        let entries: Vec<_> = stages.iter().map(entry_of).collect();
        let (error, remark) = match res {
            PointResult::Failed { error } => (Some(error.clone()), None),
            PointResult::Pruned { rung } => (None, Some(format!("pruned after {rung}"))),
            _ => (None, None),
        };
        let artifacts = self.store.root().join("artifacts");
        if let Err(e) = rec.finish(&entries, &artifacts, error, remark, false) {
            self.warn(format!("could not complete a run's record: {e:#}"));
        }
    }

    /// Run a sweep's points (`only`: those `--only` selected, which run whole, without
    /// halving), one after another in this process. A failing point is recorded and the
    /// others go on.
    pub fn run_sweep(
        &mut self,
        s: &Sweep,
        opts: &RunOptions,
        only: Option<&[usize]>,
    ) -> Result<SweepRun> {
        let selected: Vec<usize> = only.map_or((0..s.points.len()).collect(), |o| o.to_vec());
        let mut run = SweepRun {
            sweep: s.name.clone(),
            points: Vec::new(),
            decisions: self.decisions(s),
        };
        // `--until` stops every point before the rungs it names could be decided: the
        // points run as without halving.
        let halving = s
            .halving
            .as_ref()
            .filter(|_| only.is_none() && opts.until.is_none());
        let mut forced = std::collections::HashSet::new();
        let Some(h) = halving else {
            let mut recs = HashMap::new();
            for &i in &selected {
                let pt = &s.points[i];
                let r = self.run_point_recorded(i, &pt.pipeline, opts, &mut recs, &mut forced);
                let (res, stages) = match r {
                    Ok(stages) if opts.dry_run => (PointResult::Planned, stages),
                    Ok(stages) => (PointResult::Done, stages),
                    Err(error) => (PointResult::Failed { error }, Vec::new()),
                };
                self.finish_point(i, &res, &stages, &mut recs);
                run.points.push((pt.id.clone(), res, stages));
            }
            return Ok(run);
        };
        // Successive halving: rung by rung over the live points.
        let mut live: Vec<usize> = selected.clone();
        let mut results: BTreeMap<usize, (PointResult, Vec<StageOutcome>)> = BTreeMap::new();
        let mut decisions = HalvingDecisions::default();
        let mut recs = HashMap::new();
        for (r, rung) in h.rungs.iter().enumerate() {
            let mut values = Vec::new();
            for &i in &live {
                let pt = &s.points[i];
                let until = RunOptions {
                    until: Some(rung.clone()),
                    ..opts.clone()
                };
                let res = self.run_point_recorded(i, &pt.pipeline, &until, &mut recs, &mut forced);
                let before = results.remove(&i).map(|x| x.1).unwrap_or_default();
                match res {
                    Ok(stages) => {
                        let stages = merge(before, stages);
                        let out = stages
                            .iter()
                            .find(|o| o.name == *rung && o.state != StageState::Skipped)
                            .and_then(|o| o.output.clone());
                        let m = out.and_then(|o| metric_of(&self.store.artifact_dir(&o), h.metric));
                        match m {
                            Some(m) => {
                                values.push((pt.id.clone(), m));
                                results.insert(i, (PointResult::Planned, stages));
                            }
                            None if opts.dry_run => {
                                results.insert(i, (PointResult::Planned, stages));
                            }
                            None => {
                                let error = no_rung_metric(rung, h.metric);
                                results.insert(i, (PointResult::Failed { error }, stages));
                            }
                        }
                    }
                    Err(error) => {
                        results.insert(i, (PointResult::Failed { error }, Vec::new()));
                    }
                }
            }
            live.retain(|i| !matches!(results.get(i), Some((PointResult::Failed { .. }, _))));
            if r + 1 == h.rungs.len() || opts.dry_run {
                break;
            }
            let kept = promote(&values, h);
            for &i in &live {
                if !kept.contains(&s.points[i].id) {
                    let stages = results.remove(&i).map(|x| x.1).unwrap_or_default();
                    results.insert(i, (PointResult::Pruned { rung: rung.clone() }, stages));
                }
            }
            live.retain(|&i| kept.contains(&s.points[i].id));
            decisions.rungs.push(rung_record(rung, h, values, kept));
        }
        // The survivors run whole (the stages after the last rung: evaluation).
        for &i in &live {
            let pt = &s.points[i];
            let res = self.run_point_recorded(i, &pt.pipeline, opts, &mut recs, &mut forced);
            let before = results.remove(&i).map(|x| x.1).unwrap_or_default();
            results.insert(
                i,
                match res {
                    Ok(stages) if opts.dry_run => (PointResult::Planned, merge(before, stages)),
                    Ok(stages) => (PointResult::Done, merge(before, stages)),
                    Err(error) => (PointResult::Failed { error }, before),
                },
            );
        }
        if !opts.dry_run {
            run.decisions = self.record_decisions_after_run(s, decisions);
        }
        for (i, (res, stages)) in results {
            self.finish_point(i, &res, &stages, &mut recs);
            run.points.push((s.points[i].id.clone(), res, stages));
        }
        Ok(run)
    }

    /// The stages of a sweep's points grouped by what they share: one entry per distinct
    /// stage (same name and recipe), with the points that have it, in dependency order.
    pub fn sweep_stages(&mut self, s: &Sweep, selected: &[usize]) -> Result<Vec<SharedStage>> {
        self.with_sound_memo(|e| e.sweep_stages_memo(s, selected))
    }

    fn sweep_stages_memo(&mut self, s: &Sweep, selected: &[usize]) -> Result<Vec<SharedStage>> {
        let mut groups: Vec<SharedStage> = Vec::new();
        let mut index: HashMap<(String, String), usize> = HashMap::new();
        for &i in selected {
            let pt = &s.points[i];
            for d in self.decide(&pt.pipeline, &WalkOptions::default())? {
                let o = d.outcome;
                // What identifies a stage across points: its key when known, else its
                // recipe (made with a missing dataset folder's path in its place).
                let recipe: Option<Recipe> = match o.key {
                    Some(_) => None,
                    None => Some(d.recipe),
                };
                let id = match (&o.key, &recipe) {
                    (Some(k), _) => k.to_string(),
                    (None, Some(r)) => r.to_string(),
                    (None, None) => unreachable!("a stage has a key or a recipe"),
                };
                match index.get(&(o.name.clone(), id.clone())) {
                    Some(&g) => groups[g].points.push(pt.id.clone()),
                    None => {
                        index.insert((o.name.clone(), id), groups.len());
                        groups.push(SharedStage {
                            points: vec![pt.id.clone()],
                            outcome: o,
                            recipe,
                        });
                    }
                }
            }
        }
        Ok(groups)
    }
}

impl Engine {
    /// A point's metric at a rung, from the store (`None`: the rung is not there: the
    /// point failed or has not got there).
    fn rung_metric(&mut self, p: &Pipeline, rung: &str, metric: Metric) -> Result<Option<f64>> {
        let decisions = self.decide(p, &WalkOptions::default())?;
        Ok(decisions
            .iter()
            .map(|d| &d.outcome)
            .find(|o| o.name == rung && o.state == StageState::Cached)
            .and_then(|o| o.output.as_ref())
            .and_then(|out| metric_of(&self.store.artifact_dir(out), metric)))
    }

    /// Run a sweep's points with an executor: with `-j N` as local workers over all points
    /// at once (each shared stage once); on Slurm, submitted. With halving on Slurm, rung 0
    /// is submitted with a promotion job after it that decides and submits the next rung,
    /// so nothing waits on the submitting machine.
    #[allow(clippy::too_many_arguments)]
    pub fn run_sweep_with(
        &mut self,
        s: &Sweep,
        selected: &[usize],
        only: bool,
        sets: &[String],
        opts: &RunOptions,
        exec: &Executor,
    ) -> Result<SweepRun> {
        if !opts.force.is_empty() {
            bail!("--force runs with the default executor only (it re-runs a cached stage in this process)");
        }
        let _lock = match opts.dry_run {
            true => None,
            false => Some(self.share_store(&format!("pipe run {} (executor)", s.name))?),
        };
        let halving = s.halving.clone().filter(|_| !only && opts.until.is_none());
        let mut run = SweepRun {
            sweep: s.name.clone(),
            points: Vec::new(),
            decisions: self.decisions(s),
        };
        match (exec, halving) {
            (Executor::Local { jobs }, None) => {
                let points: Vec<&Pipeline> =
                    selected.iter().map(|&i| &s.points[i].pipeline).collect();
                let mut recs = self.begin_point_records(s, selected, exec, opts);
                let failed = self.run_jobs_locally(&points, sets, opts, *jobs)?;
                for &i in selected {
                    let pt = &s.points[i];
                    if let Some((rec, before)) = recs.remove(&i) {
                        let err = failed
                            .get(&pt.pipeline.name)
                            .map(|e| anyhow::anyhow!("{e}"));
                        let ran = self.ran_since(&pt.pipeline, &before);
                        self.finish_record(
                            rec,
                            &pt.pipeline,
                            &ran,
                            &HashMap::new(),
                            err.as_ref(),
                            None,
                            false,
                            None,
                        );
                    }
                    run.points.push(match failed.get(&pt.pipeline.name) {
                        Some(e) => (
                            pt.id.clone(),
                            PointResult::Failed { error: e.clone() },
                            Vec::new(),
                        ),
                        None if opts.dry_run => (pt.id.clone(), PointResult::Planned, Vec::new()),
                        None => (pt.id.clone(), PointResult::Done, Vec::new()),
                    });
                }
            }
            (Executor::Local { jobs }, Some(h)) => {
                let mut recs = self.begin_point_records(s, selected, exec, opts);
                let mut live: Vec<usize> = selected.to_vec();
                let mut results: BTreeMap<usize, PointResult> = BTreeMap::new();
                let mut decisions = HalvingDecisions::default();
                for (r, rung) in h.rungs.iter().enumerate() {
                    let until = RunOptions {
                        until: Some(rung.clone()),
                        ..opts.clone()
                    };
                    let points: Vec<&Pipeline> =
                        live.iter().map(|&i| &s.points[i].pipeline).collect();
                    let failed = self.run_jobs_locally(&points, sets, &until, *jobs)?;
                    let mut values = Vec::new();
                    for &i in &live {
                        let pt = &s.points[i];
                        if let Some(e) = failed.get(&pt.pipeline.name) {
                            results.insert(i, PointResult::Failed { error: e.clone() });
                        } else if let Some(m) = self.rung_metric(&pt.pipeline, rung, h.metric)? {
                            values.push((pt.id.clone(), m));
                        } else {
                            let error = no_rung_metric(rung, h.metric);
                            results.insert(i, PointResult::Failed { error });
                        }
                    }
                    live.retain(|i| !results.contains_key(i));
                    if r + 1 == h.rungs.len() {
                        break;
                    }
                    let kept = promote(&values, &h);
                    for &i in &live {
                        if !kept.contains(&s.points[i].id) {
                            results.insert(i, PointResult::Pruned { rung: rung.clone() });
                        }
                    }
                    live.retain(|&i| kept.contains(&s.points[i].id));
                    decisions.rungs.push(rung_record(rung, &h, values, kept));
                }
                let points: Vec<&Pipeline> = live.iter().map(|&i| &s.points[i].pipeline).collect();
                let failed = self.run_jobs_locally(&points, sets, opts, *jobs)?;
                for &i in &live {
                    let name = &s.points[i].pipeline.name;
                    results.insert(
                        i,
                        match failed.get(name) {
                            Some(e) => PointResult::Failed { error: e.clone() },
                            None => PointResult::Done,
                        },
                    );
                }
                run.decisions = self.record_decisions_after_run(s, decisions);
                for (i, res) in results {
                    if let Some((rec, before)) = recs.remove(&i) {
                        let p = &s.points[i].pipeline;
                        let (err, remark) = match &res {
                            PointResult::Failed { error } => {
                                (Some(anyhow::anyhow!("{error}")), None)
                            }
                            PointResult::Pruned { rung } => {
                                (None, Some(format!("pruned after {rung}")))
                            }
                            _ => (None, None),
                        };
                        let ran = self.ran_since(p, &before);
                        self.finish_record(
                            rec,
                            p,
                            &ran,
                            &HashMap::new(),
                            err.as_ref(),
                            remark,
                            false,
                            None,
                        );
                    }
                    run.points.push((s.points[i].id.clone(), res, Vec::new()));
                }
            }
            (Executor::Slurm(o), None) => {
                let nowait = SlurmOptions {
                    wait: false,
                    ..o.clone()
                };
                let mut submitted = Vec::new();
                let mut recs = self.begin_point_records(s, selected, exec, opts);
                for &i in selected {
                    let p = &s.points[i].pipeline;
                    let planned = self.plan_slurm(p, opts).and_then(|(must, recipes)| {
                        let ids = if must.is_empty() || opts.dry_run {
                            HashMap::new()
                        } else {
                            self.submit_slurm(p, sets, &must, &recipes, &nowait)?
                        };
                        Ok((must, recipes, ids))
                    });
                    match planned {
                        Ok((must, recipes, ids)) => submitted.push((i, must, recipes, ids)),
                        Err(e) => {
                            // The points handed to Slurm before it: their jobs run on and
                            // complete their records. The others: failed, saying why.
                            for (j, must, _, ids) in submitted {
                                if let Some((rec, _)) = recs.remove(&j) {
                                    let p = &s.points[j].pipeline;
                                    let detached = !must.is_empty();
                                    self.finish_record(
                                        rec, p, &must, &ids, None, None, detached, None,
                                    );
                                }
                            }
                            for (j, (rec, _)) in recs.drain() {
                                let p = &s.points[j].pipeline;
                                let none = HashMap::new();
                                self.finish_record(rec, p, &[], &none, Some(&e), None, false, None);
                            }
                            return Err(e);
                        }
                    }
                }
                for (i, must, recipes, ids) in submitted {
                    let pt = &s.points[i];
                    let waited = (o.wait && !must.is_empty())
                        .then(|| self.wait_slurm(&pt.pipeline, &must, &recipes, &ids));
                    if let Some((rec, _)) = recs.remove(&i) {
                        let err = waited.as_ref().and_then(|w| w.as_ref().err());
                        let detached = !o.wait && !must.is_empty();
                        self.finish_record(
                            rec,
                            &pt.pipeline,
                            &must,
                            &ids,
                            err,
                            None,
                            detached,
                            None,
                        );
                    }
                    let res = match waited {
                        Some(Ok(())) => PointResult::Done,
                        Some(Err(e)) => PointResult::Failed {
                            error: format!("{e:#}"),
                        },
                        None => PointResult::Planned,
                    };
                    run.points.push((pt.id.clone(), res, Vec::new()));
                }
            }
            (Executor::Slurm(o), Some(h)) => {
                if let Some(js) = &o.job_store {
                    bail!("--job-store {js} with halving on Slurm: the promotion job reads every point's results from one store; leave out --job-store (a store the nodes share) or [sweep.halving]");
                }
                if o.wait {
                    bail!("--wait with halving on Slurm: the promotion jobs decide later; follow them with `pipe status {}`", s.name);
                }
                let live: Vec<usize> = selected.to_vec();
                let mut recs = self.begin_point_records(s, selected, exec, opts);
                let sent = self.submit_rung(s, &h, 0, &live, sets, o, opts)?;
                // Each point's record: the rung's stages queued under their jobs, the
                // rest awaiting the promotion job, which carries the record on.
                for (i, must, ids) in &sent.points {
                    if let Some((rec, _)) = recs.remove(i) {
                        let p = &s.points[*i].pipeline;
                        let promotion = sent.promotion.as_deref();
                        self.finish_record(rec, p, must, ids, None, None, true, promotion);
                    }
                }
                for &i in selected {
                    run.points
                        .push((s.points[i].id.clone(), PointResult::Planned, Vec::new()));
                }
            }
        }
        Ok(run)
    }

    /// Run `points` as local workers; returns each failed point's error (by pipeline name).
    fn run_jobs_locally(
        &mut self,
        points: &[&Pipeline],
        sets: &[String],
        opts: &RunOptions,
        n: usize,
    ) -> Result<HashMap<String, String>> {
        let (jobs, unplanned) = self.plan_jobs(points, opts);
        // A point that cannot be planned fails alone, naming itself; the others run.
        let mut out: HashMap<String, String> = HashMap::new();
        for (point, why) in unplanned {
            self.warn(format!("{point}: {why}"));
            out.insert(point, why);
        }
        if opts.dry_run {
            for j in &jobs {
                self.note(format!("{}:{} would run", j.p.name, j.stage));
            }
            return Ok(out);
        }
        // Which points each recipe belongs to (a shared stage's failure fails them all).
        let mut failed_recipes: HashMap<Recipe, String> = HashMap::new();
        for (recipe, why) in self.run_local_jobs(&jobs, sets, n.max(1))? {
            failed_recipes.insert(recipe, why);
        }
        if failed_recipes.is_empty() {
            return Ok(out);
        }
        for p in points {
            if out.contains_key(&p.name) {
                continue;
            }
            let recipes = self.decide(p, &WalkOptions::default())?;
            if let Some(why) = recipes.iter().find_map(|d| failed_recipes.get(&d.recipe)) {
                out.insert(p.name.clone(), why.clone());
            }
        }
        Ok(out)
    }

    fn plan_slurm(
        &mut self,
        p: &Pipeline,
        opts: &RunOptions,
    ) -> Result<(Vec<String>, HashMap<String, Recipe>)> {
        self.must_run(p, opts)
    }

    /// Submit rung `r` for points `live` (each until the rung's stage; after the last rung,
    /// whole), and — unless it is the last rung — the promotion job that decides after it.
    #[allow(clippy::too_many_arguments)]
    fn submit_rung(
        &mut self,
        s: &Sweep,
        h: &Halving,
        r: usize,
        live: &[usize],
        sets: &[String],
        o: &SlurmOptions,
        opts: &RunOptions,
    ) -> Result<RungJobs> {
        let last = r + 1 == h.rungs.len();
        let nowait = SlurmOptions {
            wait: false,
            ..o.clone()
        };
        let mut after = Vec::new();
        let mut sent = RungJobs::default();
        for &i in live {
            let p = &s.points[i].pipeline;
            let o2 = RunOptions {
                until: if last { None } else { Some(h.rungs[r].clone()) },
                ..opts.clone()
            };
            let (must, recipes) = self.plan_slurm(p, &o2)?;
            let ids = match must.is_empty() {
                true => HashMap::new(),
                false => self.submit_slurm(p, sets, &must, &recipes, &nowait)?,
            };
            after.extend(ids.values().cloned());
            sent.points.push((i, must, ids));
        }
        if last {
            return Ok(sent);
        }
        after.sort();
        after.dedup();
        let jobs_dir = self.store.jobs_dir();
        std::fs::create_dir_all(&jobs_dir)?;
        let log = jobs_dir.join(format!("promote-{}-{r}.log", s.name));
        let mut args = vec![
            "--cache".to_string(),
            std::fs::canonicalize(self.store.root())
                .unwrap_or_else(|_| self.store.root().to_path_buf())
                .display()
                .to_string(),
            "sweep-promote".to_string(),
            std::fs::canonicalize(&s.file)
                .unwrap_or_else(|_| s.file.clone())
                .display()
                .to_string(),
            "--rung".to_string(),
            r.to_string(),
            "--about".to_string(),
            submitted_over(s),
        ];
        if let Some(p) = &o.partition {
            args.extend(["--partition".to_string(), p.clone()]);
        }
        if let Some(g) = o.gpus_per_stage {
            args.extend(["--gpus-per-stage".to_string(), g.to_string()]);
        }
        for x in sets {
            args.extend(["--set".to_string(), x.clone()]);
        }
        let id = super::executor::sbatch_command(
            &format!("pipe-promote:{}:{}", s.name, h.rungs[r]),
            &args,
            &log,
            &after,
            o.partition.as_deref(),
            &s.points[0].pipeline.project_dir,
        )?;
        self.note(format!(
            "halving after `{}`: promotion job {id} waits for {} job(s), then decides and submits the next rung (log {})",
            h.rungs[r],
            after.len(),
            log.display()
        ));
        sent.promotion = Some(id);
        Ok(sent)
    }

    /// A promotion job's work (`pipe sweep-promote SWEEP --rung R`): the live points'
    /// metrics at rung `r` decide who goes on (recorded), and the next rung is submitted
    /// for them, with the next promotion job after it.
    /// `about`: what the sweep was submitted over (its manifest's texts and overrides);
    /// a manifest edited since is refused, so that one sweep never mixes the results of
    /// two manifests.
    pub fn promote_on_slurm(
        &mut self,
        s: &Sweep,
        r: usize,
        about: Option<&str>,
        sets: &[String],
        o: &SlurmOptions,
    ) -> Result<Vec<String>> {
        let Some(h) = s.halving.clone() else {
            bail!("sweep `{}` has no [sweep.halving]", s.name);
        };
        if about.is_some_and(|a| a != submitted_over(s)) {
            bail!(
                "{} (or a file it extends or includes) changed since sweep `{}` was submitted: this promotion job decides nothing and submits nothing; run `pipe run {}` again to go on with the manifest as it is",
                s.file.display(),
                s.name,
                s.name
            );
        }
        if r + 1 >= h.rungs.len() {
            bail!(
                "rung {r} is the last of `{}`: nothing to promote to",
                s.name
            );
        }
        let _lock = self.share_store(&format!("pipe sweep-promote {} --rung {r}", s.name))?;
        let mut decisions = self.decisions(s);
        decisions.rungs.truncate(r);
        let live: Vec<usize> = match r {
            0 => (0..s.points.len()).collect(),
            _ => {
                let Some(prev) = decisions.rungs.get(r - 1) else {
                    bail!("rung {} of `{}` has no recorded decision", r - 1, s.name);
                };
                (0..s.points.len())
                    .filter(|&i| prev.kept.contains(&s.points[i].id))
                    .collect()
            }
        };
        let rung = &h.rungs[r];
        let mut values = Vec::new();
        for &i in &live {
            let pt = &s.points[i];
            match self.rung_metric(&pt.pipeline, rung, h.metric)? {
                Some(m) => values.push((pt.id.clone(), m)),
                None => self.warn(format!(
                    "{}: no `{rung}` result (its job failed?): it does not go on",
                    pt.pipeline.name
                )),
            }
        }
        let kept = promote(&values, &h);
        decisions
            .rungs
            .push(rung_record(rung, &h, values.clone(), kept.clone()));
        self.record_decisions(s, decisions)?;
        let next: Vec<usize> = (0..s.points.len())
            .filter(|&i| kept.contains(&s.points[i].id))
            .collect();
        let sent = self.submit_rung(s, &h, r + 1, &next, sets, o, &RunOptions::default())?;
        for &i in &live {
            // A point without a result failed: its record says so, not "pruned".
            let measured = values.iter().any(|(id, _)| *id == s.points[i].id);
            let remark = measured.then(|| format!("pruned after {rung}"));
            self.carry_record_on(&s.points[i].pipeline, remark, &sent, i);
        }
        Ok(kept)
    }

    /// A promotion job's decision in point `i`'s journal record: a point that goes on
    /// has the next rung's stages queued under their jobs (the rest await the next
    /// promotion job); a pruned point's awaiting stages are `pruned`, and the run is done
    /// once its jobs are.
    fn carry_record_on(&mut self, p: &Pipeline, pruned: Option<String>, sent: &RungJobs, i: usize) {
        let journal = Journal::of(&self.store);
        let Some(id) = journal.awaiting_decision(&p.name) else {
            return;
        };
        let cached = self.cached_stages(p);
        let went_on = sent.points.iter().find(|(j, _, _)| *j == i);
        let amended = journal.amend(&id, |rec| {
            if went_on.is_none() {
                rec.remark = pruned;
            }
            for e in rec.stages.iter_mut().filter(|e| e.state == AWAITING) {
                let Some((_, _, ids)) = went_on else {
                    e.state = PRUNED.into();
                    e.job = None;
                    continue;
                };
                if let Some(job) = ids.get(&e.name) {
                    e.state = "queued".into();
                    e.job = Some(job.clone());
                } else if cached.contains(&e.name) {
                    e.state = "cached".into();
                    e.job = None;
                } else if let Some(next) = &sent.promotion {
                    e.job = Some(next.clone());
                } else {
                    e.state = "skipped".into();
                    e.job = None;
                }
            }
        });
        if let Err(e) = amended {
            self.warn(format!(
                "{}: could not carry the halving decision into run {id}'s record: {e:#}",
                p.name
            ));
        }
    }
}

/// What one rung's submission sent to Slurm: per live point, its index, the stages
/// submitted and their jobs (none when they were cached); and the promotion job after
/// them (none after the last rung).
#[derive(Default)]
struct RungJobs {
    points: Vec<(usize, Vec<String>, HashMap<String, String>)>,
    promotion: Option<String>,
}

/// What a sweep was submitted over, for its promotion jobs: the BLAKE3 of the texts it
/// was loaded from (the manifest, every file it extends or includes) and the `--set`s.
/// Not the stages as resolved: a `device = "auto"` resolves per machine, and the
/// promotion job runs on another one.
fn submitted_over(s: &Sweep) -> String {
    let sources = s.points.first().map(|p| &*p.pipeline.sources);
    blake3::hash(&serde_json::to_vec(&sources).expect("JSON values serialize"))
        .to_hex()
        .to_string()
}

/// What sweep `s`'s halving decisions are taken over (see [`HalvingDecisions::about`]).
fn decided_over(s: &Sweep) -> String {
    let stages: Vec<serde_json::Value> = s
        .points
        .iter()
        .map(|pt| {
            let configs: BTreeMap<&String, serde_json::Value> = pt
                .pipeline
                .stages
                .iter()
                .map(|(n, st)| (n, st.config.to_json()))
                .collect();
            serde_json::json!({"id": pt.id, "stages": configs})
        })
        .collect();
    let h = s.halving.as_ref().map(
        |h| serde_json::json!({"rungs": h.rungs, "metric": h.metric, "goal": h.goal, "eta": h.eta}),
    );
    let body = serde_json::json!({"halving": h, "points": stages});
    blake3::hash(&serde_json::to_vec(&body).expect("JSON values serialize"))
        .to_hex()
        .to_string()
}

/// The seal of a decisions record: BLAKE3 of its rungs and points as JSON.
fn decisions_seal(d: &HalvingDecisions) -> String {
    let body = match d.about.is_empty() {
        true => serde_json::json!({"rungs": d.rungs, "points": d.points}),
        false => serde_json::json!({"rungs": d.rungs, "points": d.points, "about": d.about}),
    };
    blake3::hash(&serde_json::to_vec(&body).expect("JSON values serialize"))
        .to_hex()
        .to_string()
}

/// Why a point that ran a rung is out of the sweep when the rung's result has no metric
/// to compare (its `history.json` missing, unreadable or empty): a point is pruned only by
/// a comparison, never for lack of one.
fn no_rung_metric(rung: &str, metric: Metric) -> String {
    format!(
        "rung `{rung}` finished but its result has no {} to compare (history.json missing, unreadable or empty; `pipe verify` checks the store)",
        metric.as_str()
    )
}

/// The record of one rung's decision.
fn rung_record(rung: &str, h: &Halving, values: Vec<(String, f64)>, kept: Vec<String>) -> Rung {
    Rung {
        stage: rung.to_string(),
        metric: h.metric,
        goal: h.goal,
        eta: h.eta,
        values,
        kept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(goal: Goal, eta: usize) -> Halving {
        Halving {
            rungs: vec!["train".into()],
            metric: Metric::ValAcc,
            goal,
            eta,
        }
    }

    fn vals(v: &[f64]) -> Vec<(String, f64)> {
        v.iter()
            .enumerate()
            .map(|(i, x)| (format!("p{i}"), *x))
            .collect()
    }

    #[test]
    fn promote_keeps_the_best_ceil_n_over_eta_ties_by_point_order() {
        // 7 points, eta 3: ceil(7/3) = 3 go on.
        let v = vals(&[0.5, 0.7, 0.7, 0.2, 0.9, 0.1, 0.7]);
        assert_eq!(promote(&v, &h(Goal::Max, 3)), ["p4", "p1", "p2"]);
        assert_eq!(promote(&v, &h(Goal::Min, 3)), ["p5", "p3", "p0"]);
        assert_eq!(promote(&vals(&[0.3]), &h(Goal::Max, 2)), ["p0"]);
    }

    #[test]
    fn a_diverged_point_is_worst_whatever_the_goal() {
        let v = vals(&[f64::NAN, 0.4, -f64::NAN, 0.6]);
        assert_eq!(promote(&v, &h(Goal::Max, 2)), ["p3", "p1"]);
        assert_eq!(promote(&v, &h(Goal::Min, 2)), ["p1", "p3"]);
    }

    #[test]
    fn a_rung_reads_a_diverged_validation_as_nan_not_as_no_result() {
        // As a training writes it: serde_json turns the infinite loss into `null`.
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("history.json"),
            r#"[{"epoch":1,"stage":"train","lr":0.1,"train_loss":2.0,"train_acc":0.5,"val_loss":null,"val_acc":0.1,"ema_val_loss":null,"ema_val_acc":0.2}]"#,
        )
        .unwrap();
        assert!(metric_of(tmp.path(), Metric::ValLoss).is_some_and(f64::is_nan));
        assert_eq!(metric_of(tmp.path(), Metric::ValAcc), Some(0.2));
        assert_eq!(metric_of(tmp.path(), Metric::TrainLoss), Some(2.0));
    }

    #[test]
    fn a_record_with_a_diverged_point_reads_back_with_its_seal() {
        // JSON has no NaN: the record holds `null`, which once made the whole record
        // unreadable (and the decisions worked out again, with a warning, on every read).
        let mut d = HalvingDecisions {
            rungs: vec![rung_record(
                "train",
                &h(Goal::Max, 2),
                vals(&[0.5, f64::NAN, 0.7]),
                vec!["p2".into(), "p0".into()],
            )],
            points: vec!["p0".into(), "p1".into(), "p2".into()],
            ..Default::default()
        };
        d.seal = decisions_seal(&d);
        let text = serde_json::to_string(&d).unwrap();
        assert!(text.contains(r#"["p1",null]"#), "{text}");
        let back: HalvingDecisions = serde_json::from_str(&text).unwrap();
        assert!(back.rungs[0].values[1].1.is_nan());
        assert_eq!(back.rungs[0].values[2], ("p2".to_string(), 0.7));
        assert_eq!(decisions_seal(&back), back.seal);
        assert_eq!(
            back.pruned_at("p1").map(|r| r.stage.as_str()),
            Some("train")
        );
    }
}
