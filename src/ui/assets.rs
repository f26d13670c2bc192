//! The dashboard's stylesheet and scripts, built into the binary: the page loads nothing
//! from anywhere else. `vendor/echarts.min.js` is Apache ECharts' released dist file
//! (Apache-2.0; its license and notice beside it), fetched and checked against its pinned
//! SHA-256 by `scripts/fetch-echarts`.

/// `ui.css`.
pub const CSS: &str = include_str!("assets/ui.css");
/// `ui.js`: table sorting and filtering, compare, the live stage table.
pub const JS: &str = include_str!("assets/ui.js");
/// `charts.js`: the curves and the parallel coordinates, drawn with ECharts.
pub const CHARTS: &str = include_str!("assets/charts.js");
/// Apache ECharts 6.1.0, `dist/echarts.min.js`.
pub const ECHARTS: &str = include_str!("assets/vendor/echarts.min.js");
/// ECharts' license and notice, served beside it.
pub const ECHARTS_LICENSE: &str = concat!(
    include_str!("assets/vendor/echarts.LICENSE"),
    "\n",
    include_str!("assets/vendor/echarts.NOTICE")
);

/// Every asset's name.
pub const NAMES: [&str; 5] = [
    "ui.css",
    "ui.js",
    "charts.js",
    "echarts.min.js",
    "echarts.LICENSE.txt",
];

/// An asset by name, with its content type.
pub fn get(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "ui.css" => Some(("text/css; charset=utf-8", CSS)),
        "ui.js" => Some(("text/javascript; charset=utf-8", JS)),
        "charts.js" => Some(("text/javascript; charset=utf-8", CHARTS)),
        "echarts.min.js" => Some(("text/javascript; charset=utf-8", ECHARTS)),
        "echarts.LICENSE.txt" => Some(("text/plain; charset=utf-8", ECHARTS_LICENSE)),
        _ => None,
    }
}
