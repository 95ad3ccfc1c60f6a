//! `bot-bottle supervise [SLUG]`: the operator's queue as a TUI. Pending
//! requests of every bottle (or one), a detail view, and keys to approve,
//! modify (the proposed route in `$EDITOR` as YAML, checked before it is
//! granted) or reject with a comment. Every decision goes through
//! [`requests::decide`], the same path as `bot-bottle requests`.

use std::time::{Duration, Instant};

use bot_bottle_sidecars::RouteSpec;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, List, ListItem, ListState, Paragraph, Wrap};
use ratatui::{DefaultTerminal, Frame};

use crate::requests::{self, Row, printable, route_text};
use crate::{Failure, failure};

enum Mode {
    List,
    Detail,
    /// Typing the comment of a rejection of request `id`.
    Comment {
        id: String,
        text: String,
    },
    /// An edit of request `id` that failed its check: `e` edits it again.
    Invalid {
        id: String,
        yaml: String,
        error: String,
    },
}

struct App {
    slug: Option<String>,
    rows: Vec<Row>,
    list: ListState,
    mode: Mode,
    /// What the last action did, for the status line.
    status: String,
}

impl App {
    fn refresh(&mut self) {
        match requests::rows(self.slug.as_deref(), false) {
            Ok(rows) => self.rows = rows,
            Err(f) => self.status = f.message,
        }
        let n = self.rows.len();
        let sel = self.list.selected().unwrap_or(0).min(n.saturating_sub(1));
        self.list.select(if n == 0 { None } else { Some(sel) });
    }

    fn selected(&self) -> Option<&Row> {
        self.list.selected().and_then(|i| self.rows.get(i))
    }

    fn decided(&mut self, r: Result<Row, Failure>) {
        self.status = match r {
            Ok(row) => format!(
                "{} {}: {}{}",
                row.request.id,
                state(&row),
                route_text(&row.request.route),
                row.persisted.map(|f| format!(" (written into {})", f.display())).unwrap_or_default()
            ),
            Err(f) => f.message,
        };
        self.mode = Mode::List;
        self.refresh();
    }
}

fn state(row: &Row) -> String {
    serde_json::to_value(row.request.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

pub(crate) fn run(slug: Option<String>) -> Result<(), Failure> {
    let mut app = App { slug, rows: Vec::new(), list: ListState::default(), mode: Mode::List, status: String::new() };
    app.refresh();
    let mut term = ratatui::try_init().map_err(|e| failure(format!("error: supervise needs a terminal: {e}")))?;
    let r = main_loop(&mut term, &mut app);
    ratatui::restore();
    r
}

fn main_loop(term: &mut DefaultTerminal, app: &mut App) -> Result<(), Failure> {
    let mut last = Instant::now();
    loop {
        term.draw(|f| draw(f, app)).map_err(|e| failure(format!("error: drawing: {e}")))?;
        if event::poll(Duration::from_millis(250)).map_err(|e| failure(format!("error: terminal: {e}")))? {
            let ev = event::read().map_err(|e| failure(format!("error: terminal: {e}")))?;
            if let Event::Key(k) = ev
                && k.kind == KeyEventKind::Press
            {
                if k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL) {
                    return Ok(());
                }
                if !key(term, app, k.code)? {
                    return Ok(());
                }
            }
        }
        // Other operators and new requests: reread the queues.
        if last.elapsed() > Duration::from_millis(500) {
            app.refresh();
            last = Instant::now();
        }
    }
}

/// Handles one key; false quits.
fn key(term: &mut DefaultTerminal, app: &mut App, code: KeyCode) -> Result<bool, Failure> {
    match &mut app.mode {
        Mode::Comment { id, text } => match code {
            KeyCode::Enter => {
                let (id, text) = (id.clone(), text.trim().to_owned());
                let comment = if text.is_empty() { None } else { Some(text) };
                let r = requests::decide(&id, None, comment, false);
                app.decided(r);
            }
            KeyCode::Esc => app.mode = Mode::List,
            KeyCode::Backspace => {
                text.pop();
            }
            KeyCode::Char(c) => text.push(c),
            _ => {}
        },
        Mode::Invalid { id, yaml, .. } => match code {
            KeyCode::Char('e') => {
                let (id, yaml) = (id.clone(), yaml.clone());
                modify(term, app, &id, yaml)?;
            }
            KeyCode::Esc | KeyCode::Char('q') => {
                app.mode = Mode::List;
                app.status = "modify cancelled".into();
            }
            _ => {}
        },
        Mode::List | Mode::Detail => match code {
            KeyCode::Char('q') => return Ok(false),
            KeyCode::Esc if matches!(app.mode, Mode::List) => return Ok(false),
            KeyCode::Esc => app.mode = Mode::List,
            KeyCode::Down | KeyCode::Char('j') => app.list.select_next(),
            KeyCode::Up | KeyCode::Char('k') => app.list.select_previous(),
            KeyCode::Enter => app.mode = Mode::Detail,
            KeyCode::Char('a') => {
                if let Some(id) = app.selected().map(|r| r.request.id.clone()) {
                    let r = requests::decide(&id, Some(&|asked: &RouteSpec| asked.clone()), None, false);
                    app.decided(r);
                }
            }
            KeyCode::Char('p') => {
                // For good: also into the bottle's manifest file.
                if let Some(id) = app.selected().map(|r| r.request.id.clone()) {
                    let r = requests::decide(&id, Some(&|asked: &RouteSpec| asked.clone()), None, true);
                    app.decided(r);
                }
            }
            KeyCode::Char('r') => {
                if let Some(id) = app.selected().map(|r| r.request.id.clone()) {
                    app.mode = Mode::Comment { id, text: String::new() };
                }
            }
            KeyCode::Char('m') => {
                if let Some(row) = app.selected() {
                    let id = row.request.id.clone();
                    let yaml = proposal(row);
                    modify(term, app, &id, yaml)?;
                }
            }
            _ => {}
        },
    }
    Ok(true)
}

/// The proposed route as the YAML the operator edits.
fn proposal(row: &Row) -> String {
    let q = &row.request;
    let route = serde_yaml::to_string(&q.route).unwrap_or_default();
    let why: String = q.justification.lines().map(|l| format!("#   {}\n", printable(l))).collect();
    format!(
        "# The route to grant for request {} of bottle {}: edit it, save and quit.\n\
         # host (required), paths (prefixes; omit for any), methods (omit for any).\n\
         # The agent's justification:\n{why}{route}",
        q.id, row.slug
    )
}

/// Opens `$VISUAL`/`$EDITOR` on `yaml`; grants the edited route if it passes
/// the manifest's route checker, otherwise says why and offers to edit again.
fn modify(term: &mut DefaultTerminal, app: &mut App, id: &str, yaml: String) -> Result<(), Failure> {
    let edited = edit(term, &yaml)?;
    let checked = serde_yaml::from_str::<RouteSpec>(&edited).map_err(|e| e.to_string()).and_then(|spec| {
        match bot_bottle_sidecars::check_route(&spec) {
            Ok(_) => Ok(spec),
            Err(e) => Err(requests::chain(&e)),
        }
    });
    match checked {
        Ok(spec) => {
            let r = requests::decide(id, Some(&move |_: &RouteSpec| spec.clone()), None, false);
            app.decided(r);
        }
        Err(error) => app.mode = Mode::Invalid { id: id.to_owned(), yaml: edited, error },
    }
    Ok(())
}

/// Leaves the TUI, runs the editor on a temporary file holding `text`, and
/// comes back with what was saved.
fn edit(term: &mut DefaultTerminal, text: &str) -> Result<String, Failure> {
    let io = |e: std::io::Error| failure(format!("error: editing the route: {e}"));
    let file = tempfile::Builder::new().prefix("bot-bottle-route-").suffix(".yaml").tempfile().map_err(io)?;
    std::fs::write(file.path(), text).map_err(io)?;
    let editor = std::env::var("VISUAL").or_else(|_| std::env::var("EDITOR")).unwrap_or_else(|_| "vi".into());
    ratatui::restore();
    // Through sh, so that an editor with arguments (`code -w`) works.
    let status =
        std::process::Command::new("sh").args(["-c", &format!("{editor} \"$1\""), "sh"]).arg(file.path()).status();
    *term = ratatui::try_init().map_err(io)?;
    let status = status.map_err(io)?;
    if !status.success() {
        return Err(failure(format!("error: the editor `{editor}` failed ({status})")));
    }
    std::fs::read_to_string(file.path()).map_err(io)
}

fn draw(f: &mut Frame<'_>, app: &mut App) {
    let [main, help, status] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(1), Constraint::Length(3)]).areas(f.area());
    let title = format!(" bot-bottle supervise: {} pending ", app.rows.len());
    match &app.mode {
        Mode::Detail => {
            let text = app.selected().map(detail).unwrap_or_else(|| vec![Line::from("no request selected")]);
            let p = Paragraph::new(text).wrap(Wrap { trim: false }).block(Block::bordered().title(title));
            f.render_widget(p, main);
        }
        _ => {
            let items: Vec<ListItem<'_>> = app
                .rows
                .iter()
                .map(|r| {
                    let q = &r.request;
                    ListItem::new(vec![
                        Line::from(format!("{}  {}  {}", q.id, r.slug, route_text(&q.route))),
                        Line::from(format!("    why: {}", printable(&q.justification))),
                    ])
                })
                .collect();
            let list = List::new(items)
                .block(Block::bordered().title(title))
                .highlight_style(Style::default().add_modifier(Modifier::REVERSED))
                .highlight_symbol("> ");
            f.render_stateful_widget(list, main, &mut app.list);
        }
    }
    let keys = match &app.mode {
        Mode::Comment { .. } => "type the comment for the agent; Enter rejects, Esc cancels",
        Mode::Invalid { .. } => "e edit again, Esc cancel",
        _ => "a approve  p approve for good  m modify  r reject  Enter detail  Esc back  q quit",
    };
    f.render_widget(Paragraph::new(keys), help);
    let line = match &app.mode {
        Mode::Comment { id, text } => format!("reject {id}: {text}_"),
        Mode::Invalid { error, .. } => format!("invalid route: {error}"),
        _ => app.status.clone(),
    };
    let p = Paragraph::new(line).wrap(Wrap { trim: true }).block(Block::default().borders(Borders::TOP));
    f.render_widget(p, status);
}

fn detail(r: &Row) -> Vec<Line<'static>> {
    let q = &r.request;
    let mut v = vec![
        Line::from(format!("request:   {}", q.id)),
        Line::from(format!("bottle:    {}", r.slug)),
        Line::from(format!("asked at:  {}", q.created)),
        Line::from(format!("host:      {}", q.route.host)),
        Line::from(format!(
            "paths:     {}",
            if q.route.paths.is_empty() { "any".into() } else { q.route.paths.join(", ") }
        )),
        Line::from(format!(
            "methods:   {}",
            if q.route.methods.is_empty() { "any".into() } else { q.route.methods.join(", ") }
        )),
        Line::from(format!("lifetime:  {}", serde_json::to_string(&q.lifetime).unwrap_or_default().trim_matches('"'))),
        Line::from("justification:"),
    ];
    // The agent's text: nothing in it may reach the terminal as a control.
    v.extend(q.justification.lines().map(|l| Line::from(format!("  {}", printable(l)))));
    v
}
