//! The dashboard's stylesheet and script, built into the binary: the page loads nothing
//! from anywhere else.

/// `ui.css`.
pub const CSS: &str = include_str!("assets/ui.css");
/// `ui.js`: table sorting and filtering, compare, live curves (server-sent events).
pub const JS: &str = include_str!("assets/ui.js");

/// An asset by name, with its content type.
pub fn get(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "ui.css" => Some(("text/css; charset=utf-8", CSS)),
        "ui.js" => Some(("text/javascript; charset=utf-8", JS)),
        _ => None,
    }
}
