//! Which page the app shows, kept in the URL path so that a reload or a shared link opens
//! the same page: `/` is Chat, `/gpus` the GPU page, `/traces` and `/traces/{id}` the
//! traces and one trace, `/sessions` and `/sessions/{id}` the sessions and one session,
//! `/costs` the cost dashboard. Moving between pages pushes a history entry; Back and
//! Forward come back through `popstate`.

use leptos::ev;
use leptos::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Page {
    Chat,
    Gpus,
    Traces,
    /// One trace, by id.
    Trace(String),
    Sessions,
    /// One session, by id.
    Session(String),
    Costs,
}

impl Page {
    pub fn path(&self) -> String {
        match self {
            Page::Chat => "/".to_owned(),
            Page::Gpus => "/gpus".to_owned(),
            Page::Traces => "/traces".to_owned(),
            Page::Trace(id) => format!("/traces/{}", encode_segment(id)),
            Page::Sessions => "/sessions".to_owned(),
            Page::Session(id) => format!("/sessions/{}", encode_segment(id)),
            Page::Costs => "/costs".to_owned(),
        }
    }

    /// The sidebar entry this page belongs to (a trace belongs to Traces).
    pub fn section(&self) -> Page {
        match self {
            Page::Trace(_) => Page::Traces,
            Page::Session(_) => Page::Sessions,
            page => page.clone(),
        }
    }

    /// Unknown paths open the chat (the server answers every extensionless path with the app).
    fn from_path(path: &str) -> Self {
        let path = path.trim_end_matches('/');
        let item = |prefix: &str| {
            path.strip_prefix(prefix)
                .filter(|rest| !rest.is_empty() && !rest.contains('/'))
                .map(decode_segment)
        };
        match path {
            "/gpus" => Page::Gpus,
            "/traces" => Page::Traces,
            "/sessions" => Page::Sessions,
            "/costs" => Page::Costs,
            _ => {
                if let Some(id) = item("/traces/") {
                    Page::Trace(id)
                } else if let Some(id) = item("/sessions/") {
                    Page::Session(id)
                } else {
                    Page::Chat
                }
            }
        }
    }
}

/// An id as one path segment (ids are the caller's: they may hold `/`, `?` or spaces).
fn encode_segment(id: &str) -> String {
    String::from(js_sys::encode_uri_component(id))
}

fn decode_segment(segment: &str) -> String {
    js_sys::decode_uri_component(segment)
        .map(String::from)
        .unwrap_or_else(|_| segment.to_owned())
}

/// The page shown, in step with the address bar. Cheap to copy into closures.
#[derive(Clone, Copy)]
pub struct Route {
    page: RwSignal<Page>,
}

impl Route {
    /// Reads the page from the address bar and follows Back and Forward until the
    /// owning component is dropped.
    pub fn from_location() -> Self {
        let route = Self {
            page: RwSignal::new(Page::from_path(&location_path())),
        };
        let listener = window_event_listener(ev::popstate, move |_| {
            route.show(Page::from_path(&location_path()));
        });
        on_cleanup(move || listener.remove());
        route
    }

    /// The page shown (tracked).
    pub fn page(&self) -> Page {
        self.page.get()
    }

    /// The sidebar entry of the page shown (tracked).
    pub fn section(&self) -> Page {
        self.page.with(Page::section)
    }

    /// Shows `page` and records it in the browser history.
    pub fn go(self, page: Page) {
        if self.page.with_untracked(|current| *current == page) {
            return;
        }
        if let Ok(history) = window().history() {
            // Only fails for a cross-origin URL, which a path of ours never is.
            let _ =
                history.push_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some(&page.path()));
        }
        self.show(page);
    }

    /// A click handler for an `<a href=page.path()>`: shows `page` in place, and leaves a
    /// modified click (new tab, new window) to the browser.
    pub fn link(self, page: Page) -> impl Fn(web_sys::MouseEvent) + Clone + 'static {
        move |event: web_sys::MouseEvent| {
            let modified =
                event.ctrl_key() || event.meta_key() || event.shift_key() || event.alt_key();
            if !modified && event.button() == 0 {
                event.prevent_default();
                // A link inside a clickable row must not also click the row.
                event.stop_propagation();
                self.go(page.clone());
            }
        }
    }

    fn show(self, page: Page) {
        // Setting the same page would rebuild it (and restart its polling).
        if self.page.with_untracked(|current| *current != page) {
            self.page.set(page);
        }
    }
}

fn location_path() -> String {
    window().location().pathname().unwrap_or_default()
}
