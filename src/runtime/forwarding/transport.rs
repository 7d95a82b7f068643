//! The two tasks of forwarding: the connection that `LISTEN`s for this process's forwarded
//! commands and answers (and holds its ownerships), and the writer that `NOTIFY`s them.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{AsyncMessage, NoTls};

use super::{Forwarding, RELEASE_EVERY, locked, wire};
use crate::metrics as names;
use crate::runtime::Inner;
use crate::store::{EventStore, Session};

/// The connection that listens for this process's forwarded commands and holds its ownerships.
pub(super) struct Link {
    pub(super) client: tokio_postgres::Client,
    pub(super) channel: String,
}

/// A notification to send, or a marker answered once everything queued before it was sent.
pub(super) struct Note {
    channel: String,
    answer: bool,
    item: String,
    sent: Option<oneshot::Sender<()>>,
}

impl Note {
    pub(super) fn new(channel: String, answer: bool, item: String) -> Self {
        Self {
            channel,
            answer,
            item,
            sent: None,
        }
    }

    pub(super) fn marker(sent: oneshot::Sender<()>) -> Self {
        Self {
            channel: String::new(),
            answer: false,
            item: String::new(),
            sent: Some(sent),
        }
    }
}

pub(super) fn channel_of(pid: i32) -> String {
    format!("dcb_forward_{pid}")
}

/// Listens for forwarded commands and answers, reconnecting after a failure. Ownerships end
/// with each connection.
pub(super) async fn listen<S: EventStore + 'static>(
    forwarding: Arc<Forwarding<S>>,
    runtime: Weak<Inner<S>>,
) {
    let mut failures = 0u32;
    loop {
        match listen_once(&forwarding, &runtime).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::debug!(error = %e, "the forwarding listener lost its connection");
            }
        }
        *locked(&forwarding.link) = None;
        forwarding.owners.lock().await.clear();
        forwarding.leases.clear_owned();
        metrics::gauge!(names::OWNED_KEYS).set(0.0);
        tokio::time::sleep(Duration::from_millis(50u64 << failures.min(5))).await;
    }
}

async fn listen_once<S: EventStore + 'static>(
    forwarding: &Arc<Forwarding<S>>,
    runtime: &Weak<Inner<S>>,
) -> Result<(), tokio_postgres::Error> {
    let config = Session::config(forwarding.leases.config());
    let (client, mut connection) = config.connect(NoTls).await?;
    let (heard, mut notes) = mpsc::unbounded_channel::<String>();
    // The connection delivers notifications (and answers queries) only while polled.
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message
                && heard.send(n.payload().to_owned()).is_err()
            {
                return;
            }
        }
    });
    let driven = async {
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await?
            .get(0);
        let channel = channel_of(pid);
        client.batch_execute(&format!("LISTEN {channel}")).await?;
        *locked(&forwarding.link) = Some(Arc::new(Link { client, channel }));
        while let Some(payload) = notes.recv().await {
            forwarding.dispatch(runtime, &payload);
        }
        Ok(())
    };
    let ended = driven.await;
    driver.abort();
    ended
}

/// Sends notifications: all that queued while the last statement ran go in the next, packed.
pub(super) async fn write<S: EventStore + 'static>(
    forwarding: Arc<Forwarding<S>>,
    mut unsent: mpsc::UnboundedReceiver<Note>,
) {
    let mut session: Option<(Session, tokio_postgres::Statement)> = None;
    while let Some(first) = unsent.recv().await {
        let mut notes = vec![first];
        while let Ok(note) = unsent.try_recv() {
            notes.push(note);
        }
        let mut groups: Vec<((String, bool), Vec<String>)> = Vec::new();
        let mut markers = Vec::new();
        for note in notes {
            if let Some(sent) = note.sent {
                markers.push(sent);
                continue;
            }
            let group = (note.channel, note.answer);
            match groups.iter_mut().find(|(g, _)| *g == group) {
                Some((_, items)) => items.push(note.item),
                None => groups.push((group, vec![note.item])),
            }
        }
        let (mut channels, mut payloads) = (Vec::new(), Vec::new());
        for ((channel, answer), items) in groups {
            for payload in wire::pack(if answer { "Answers" } else { "Requests" }, &items) {
                channels.push(channel.clone());
                payloads.push(payload);
            }
        }
        if !channels.is_empty() {
            if session.as_ref().is_none_or(|(s, _)| !s.is_alive()) {
                session = open_writer(&forwarding).await;
            }
            // Without a session they are lost: the senders hear nothing and run their commands
            // themselves.
            if let Some((open, notify)) = &session
                && let Err(e) = open.client().execute(notify, &[&channels, &payloads]).await
            {
                tracing::debug!(error = %e, "could not send forwarding notifications");
                session = None;
            }
        }
        for sent in markers {
            let _ = sent.send(());
        }
    }
}

/// Gives back, every [`RELEASE_EVERY`], the keys whose lease lapsed (apart from the listener,
/// so that its answers are never held up by it).
pub(super) async fn release<S: EventStore + 'static>(forwarding: Arc<Forwarding<S>>) {
    let mut ticks = tokio::time::interval(RELEASE_EVERY);
    loop {
        ticks.tick().await;
        forwarding.release_lapsed().await;
    }
}

async fn open_writer<S: EventStore + 'static>(
    forwarding: &Forwarding<S>,
) -> Option<(Session, tokio_postgres::Statement)> {
    let session = Session::open(forwarding.leases.config()).await.ok()?;
    // A notification needs no disk sync: losing one costs a sender a wait, nothing else.
    session
        .client()
        .batch_execute("SET synchronous_commit = off")
        .await
        .ok()?;
    let notify = session
        .client()
        .prepare("SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS t(c, p)")
        .await
        .ok()?;
    Some((session, notify))
}
