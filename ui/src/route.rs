//! Which page the app shows, kept in the URL path so that a reload or a shared link opens
//! the same page: `/` is Chat, `/gpus` the GPU page. Moving between pages pushes a
//! history entry; Back and Forward come back through `popstate`.

use leptos::ev;
use leptos::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    Chat,
    Gpus,
}

impl Page {
    pub fn path(self) -> &'static str {
        match self {
            Page::Chat => "/",
            Page::Gpus => "/gpus",
        }
    }

    /// Unknown paths open the chat (the server answers every extensionless path with the app).
    fn from_path(path: &str) -> Self {
        match path.trim_end_matches('/') {
            "/gpus" => Page::Gpus,
            _ => Page::Chat,
        }
    }
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

    /// Shows `page` and records it in the browser history.
    pub fn go(self, page: Page) {
        if self.page.get_untracked() == page {
            return;
        }
        if let Ok(history) = window().history() {
            // Only fails for a cross-origin URL, which a fixed path never is.
            let _ =
                history.push_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some(page.path()));
        }
        self.show(page);
    }

    fn show(self, page: Page) {
        // Setting the same page would rebuild it (and restart its polling).
        if self.page.get_untracked() != page {
            self.page.set(page);
        }
    }
}

fn location_path() -> String {
    window().location().pathname().unwrap_or_default()
}
