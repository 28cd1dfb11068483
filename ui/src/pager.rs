//! Previous / next buttons under a paginated list (traces, sessions), with "page 2 of 7 ·
//! 312 traces" from the answer's `meta`.

use leptos::prelude::*;

use crate::gpu_page::group_thousands;
use crate::traces_api::PageMeta;

#[component]
pub fn Pager(
    /// The page asked for, from 1.
    page: RwSignal<u64>,
    /// The last answer's `meta`; `None` while nothing has arrived.
    #[prop(into)]
    meta: Signal<Option<PageMeta>>,
    /// What the list holds, plural ("traces").
    noun: &'static str,
) -> impl IntoView {
    let total_pages = move || meta.with(|meta| meta.as_ref().map_or(1, |m| m.total_pages.max(1)));
    let summary = move || {
        meta.with(|meta| {
            meta.as_ref().map(|meta| {
                let noun = if meta.total_items == 1 {
                    noun.strip_suffix('s').unwrap_or(noun)
                } else {
                    noun
                };
                format!(
                    "Page {} of {} · {} {noun}",
                    meta.page,
                    meta.total_pages.max(1),
                    group_thousands(meta.total_items)
                )
            })
        })
    };
    view! {
        <nav class="pager" aria-label="Pages" data-testid="pager">
            <button
                type="button"
                class="pager-button"
                data-testid="pager-previous"
                prop:disabled={move || page.get() <= 1}
                on:click=move |_| page.update(|page| *page = page.saturating_sub(1).max(1))
            >
                "← Previous"
            </button>
            <span class="pager-summary" data-testid="pager-summary">{summary}</span>
            <button
                type="button"
                class="pager-button"
                data-testid="pager-next"
                prop:disabled={move || page.get() >= total_pages()}
                on:click=move |_| page.update(|page| *page += 1)
            >
                "Next →"
            </button>
        </nav>
    }
}
