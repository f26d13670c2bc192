//! `split`: cut a stratified, seeded sample of each class out of one split into a new one.
//!
//! With `test_per_class = 50` every class gives exactly 50 images (as the chapter cuts
//! Tiny ImageNet's test set from train); with `test_fraction` each class gives
//! `round(fraction * count)`. Other splits (val) pass through unchanged. Rows keep their
//! original order in both outputs.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::StageCtx;
use crate::data::index::{read_index, rebase_path, splits_in, write_index, IndexRow};
use crate::manifest::SplitConfig;

/// Run the split stage.
pub fn run(ctx: &StageCtx<'_>, c: &SplitConfig) -> Result<String> {
    let input = ctx.input_dir();
    let input_name = &ctx.inputs[0].0;
    let present = splits_in(input)?;
    if !present.contains(&c.from_split) {
        bail!(
            "input `{input_name}` has no split `{}` (it has: {})",
            c.from_split,
            present.join(", ")
        );
    }
    if present.contains(&c.to_split) {
        bail!(
            "input `{input_name}` already has a split `{}`; choose another `to_split`",
            c.to_split
        );
    }
    let rows = rebase(
        read_index(&input.join(format!("{}.csv", c.from_split)))?,
        input,
    );
    let mut by_class: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        by_class.entry(r.label).or_default().push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(c.seed.unwrap_or(42));
    let mut take = vec![false; rows.len()];
    for (label, idx) in &mut by_class {
        let n = match (c.test_per_class, c.test_fraction) {
            (Some(n), _) => n,
            (None, Some(f)) => (f * idx.len() as f64).round() as usize,
            (None, None) => bail!("split needs `test_per_class` or `test_fraction`"),
        };
        if n >= idx.len() {
            let class = &rows[idx[0]].class;
            bail!(
                "class {label} ({class}) has {} images in `{}`; cannot move {n} to `{}` and keep any for training",
                idx.len(),
                c.from_split,
                c.to_split
            );
        }
        idx.shuffle(&mut rng);
        for &i in idx.iter().take(n) {
            take[i] = true;
        }
    }
    let (mut kept, mut cut) = (Vec::new(), Vec::new());
    for (i, r) in rows.into_iter().enumerate() {
        if take[i] {
            cut.push(r);
        } else {
            kept.push(r);
        }
    }
    write_index(&ctx.out.join(format!("{}.csv", c.from_split)), &kept)?;
    write_index(&ctx.out.join(format!("{}.csv", c.to_split)), &cut)?;
    for s in &present {
        if s != &c.from_split {
            let rows = rebase(read_index(&input.join(format!("{s}.csv")))?, input);
            write_index(&ctx.out.join(format!("{s}.csv")), &rows)
                .with_context(|| format!("cannot copy split {s}"))?;
        }
    }
    crate::data::copy_file(&input.join("classes.csv"), &ctx.out.join("classes.csv"))?;
    let mut counts = vec![
        format!("{} {}", c.from_split, kept.len()),
        format!("{} {}", c.to_split, cut.len()),
    ];
    for s in &present {
        if s != &c.from_split {
            let n = read_index(&ctx.out.join(format!("{s}.csv")))?.len();
            counts.push(format!("{s} {n}"));
        }
    }
    Ok(format!(
        "{} (stratified over {} classes)",
        counts.join(", "),
        by_class.len()
    ))
}

fn rebase(mut rows: Vec<IndexRow>, input: &std::path::Path) -> Vec<IndexRow> {
    for r in &mut rows {
        r.path = rebase_path(&r.path, input);
    }
    rows
}
