//! Markdown to HTML for assistant replies, with the model's raw HTML neutralised.
//!
//! Model output is untrusted: raw HTML is rendered as visible text, and links or
//! images with script-capable URLs (`javascript:`, `data:`, `vbscript:`) lose their target.

use pulldown_cmark::{CowStr, Event, Options, Parser, Tag, html};

/// Renders `source` as HTML safe to put into `innerHTML`.
pub fn render(source: &str) -> String {
    let options =
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    let events = Parser::new_ext(source, options).map(neutralise);
    let mut out = String::with_capacity(source.len() * 3 / 2);
    html::push_html(&mut out, events);
    out
}

fn neutralise(event: Event<'_>) -> Event<'_> {
    match event {
        Event::Html(raw) | Event::InlineHtml(raw) => Event::Text(raw),
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Link {
            link_type,
            dest_url: safe_url(dest_url),
            title,
            id,
        }),
        Event::Start(Tag::Image {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Image {
            link_type,
            dest_url: safe_url(dest_url),
            title,
            id,
        }),
        other => other,
    }
}

fn safe_url(url: CowStr<'_>) -> CowStr<'_> {
    let scheme: String = url
        .chars()
        .filter(|character| !character.is_whitespace() && !character.is_control())
        .take_while(|&character| character != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    let has_scheme = url.contains(':');
    if has_scheme && matches!(scheme.as_str(), "javascript" | "data" | "vbscript") {
        CowStr::Borrowed("#")
    } else {
        url
    }
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn code_blocks_become_pre_code() {
        let html = render("```rust\nfn main() {}\n```");
        assert!(
            html.contains("<pre><code class=\"language-rust\">fn main() {}"),
            "{html}"
        );
    }

    #[test]
    fn raw_html_is_shown_as_text() {
        let html = render("hi <script>alert(1)</script> <b onclick=x>bold</b>");
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<b "), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }

    #[test]
    fn script_links_lose_their_target() {
        let html = render("[x](javascript:alert(1)) [y](https://example.com)");
        assert!(!html.contains("javascript"), "{html}");
        assert!(html.contains("href=\"https://example.com\""), "{html}");
    }
}
