//! Kubernetes Events on Services, recorded by a task of their own: they are
//! best effort, and a burst of them (one per Service when 10,000 get their
//! VIPs at start) must not hold up the agent's next change.

use std::{
    hash::{DefaultHasher, Hash as _, Hasher as _},
    time::Duration,
};

use futures::{StreamExt as _, stream};
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use kube::{
    Client, Resource as _,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use tokio::{
    sync::mpsc::{UnboundedSender, unbounded_channel},
    task::JoinHandle,
};
use tracing::warn;

/// The name Events give as their reporting controller.
const CONTROLLER: &str = "lb";

/// What an Event says, but for its note.
#[derive(Clone, Copy)]
pub(super) struct Kind {
    type_: EventType,
    /// What lb was doing.
    action: &'static str,
    reason: &'static str,
    repeats: Repeats,
}

impl Kind {
    /// A Service got its VIPs.
    pub(super) const IP_ALLOCATED: Kind = Kind {
        type_: EventType::Normal,
        action: ASSIGN,
        reason: "IPAllocated",
        repeats: Repeats::Counted,
    };

    /// This host answers for a Service's VIPs at layer 2 (the note says
    /// which, and on which interfaces).
    pub(super) const NODE_ASSIGNED: Kind = Kind {
        type_: EventType::Normal,
        action: "AnnounceVIP",
        reason: "nodeAssigned",
        repeats: Repeats::Recorded,
    };

    /// A problem that keeps a Service from being served as asked.
    pub(super) const fn problem(reason: &'static str) -> Kind {
        Kind {
            type_: EventType::Warning,
            action: ASSIGN,
            reason,
            repeats: Repeats::Counted,
        }
    }
}

/// The action of Events about VIPs being assigned (and what kept a
/// Service from being served).
const ASSIGN: &str = "AssignVIP";

/// Events being recorded at once.
const CONCURRENT_EVENTS: usize = 64;

/// Recorders the Services are spread over. kube's Recorder scans every Event
/// it remembers (to make a repeat of one a series) on each publish, so one for
/// all made assigning thousands of VIPs quadratic. What it remembers is keyed
/// by the Service, so splitting them by Service forgets nothing.
const RECORDERS: usize = 64;

/// An Event to record: the recorder of its Service (`None`: a recorder of
/// its own, see [`Repeats`]), the Event, the Service.
type Pending = (Option<usize>, Event, ObjectReference);

/// What a second Event like an earlier one (same type, reason, action and
/// Service) becomes.
#[derive(Clone, Copy)]
pub(super) enum Repeats {
    /// A count on the first, whose note and time stay: kube's recorder
    /// does this for some minutes, so a problem that comes back is one
    /// Event.
    Counted,
    /// An Event of its own, with its note and time: what changed is in the
    /// note.
    Recorded,
}

/// Hands Events to the recording task.
pub(super) struct EventRecorder {
    /// `None` once flushed: the task then ends when the queue is empty.
    pending: Option<UnboundedSender<Pending>>,
    task: JoinHandle<()>,
}

impl EventRecorder {
    /// Starts the recording task (needs a Tokio runtime).
    pub(super) fn start(client: &Client, instance: &str) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER.to_owned(),
            instance: Some(instance.to_owned()),
        };
        let recorders: Vec<Recorder> = (0..RECORDERS)
            .map(|_| Recorder::new(client.clone(), reporter.clone()))
            .collect();
        let client = client.clone();
        let (pending, mut received) = unbounded_channel::<Pending>();
        let task = tokio::spawn(async move {
            stream::poll_fn(|cx| received.poll_recv(cx))
                .for_each_concurrent(CONCURRENT_EVENTS, |(index, event, service)| {
                    let (client, reporter, recorders) = (&client, &reporter, &recorders);
                    async move {
                        let own;
                        let recorder = match index {
                            Some(index) => &recorders[index],
                            None => {
                                own = Recorder::new(client.clone(), reporter.clone());
                                &own
                            }
                        };
                        if let Err(error) = recorder.publish(&event, &service).await {
                            warn!(%error, reason = event.reason, "event not recorded");
                        }
                    }
                })
                .await;
        });
        Self {
            pending: Some(pending),
            task,
        }
    }

    /// Records the Events still queued, for at most `grace`: what is left
    /// then is dropped, and the log says so. The agent calls this as it
    /// stops, so that the Events of its last round are not lost.
    pub(super) async fn flush(&mut self, grace: Duration) {
        // Closing the queue ends the task once it recorded what is queued.
        self.pending = None;
        // A finished task has nothing left to record (and a handle awaited
        // once must not be awaited again: a second flush returns here).
        if self.task.is_finished() {
            return;
        }
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            warn!(
                grace_seconds = grace.as_secs_f64(),
                "Events still queued at exit were not recorded"
            );
        }
    }

    /// Records an Event of `kind` on `service` soon; one that cannot be
    /// recorded is logged, not retried.
    pub(super) fn publish(&self, service: &Service, kind: Kind, note: String) {
        let event = Event {
            type_: kind.type_,
            reason: kind.reason.to_owned(),
            note: Some(note),
            action: kind.action.to_owned(),
            secondary: None,
        };
        let recorder = match kind.repeats {
            Repeats::Counted => {
                let mut hasher = DefaultHasher::new();
                (&service.metadata.namespace, &service.metadata.name).hash(&mut hasher);
                Some(hasher.finish() as usize % RECORDERS)
            }
            Repeats::Recorded => None,
        };
        // Fails only once the task ended, which it does only when dropped
        // or flushed; after a flush nothing is recorded any more.
        if let Some(pending) = &self.pending {
            let _ = pending.send((recorder, event, service.object_ref(&())));
        }
    }
}

impl Drop for EventRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent flushes once as it stops; a second flush (a second stop
    /// path) must return, not await the finished task's handle again.
    #[tokio::test]
    async fn a_second_flush_returns() {
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("url"));
        let client = Client::try_from(config).expect("client");
        let mut events = EventRecorder::start(&client, "lb-test");
        events.flush(Duration::from_secs(5)).await;
        events.flush(Duration::from_secs(5)).await;
        assert!(events.task.is_finished());
    }
}
