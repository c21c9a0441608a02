//! The hub's unit tests.

use super::*;
use crate::bus::{Inlet, MemoryBus};
use crate::metrics::Protocol;
use shared::event::UserRef;

struct Plain;

impl Outlet for Plain {
    fn labels(&self) -> (Protocol, &str) {
        (Protocol::Phoenix, "/hub-test")
    }
    fn push(&self, _: &Delivery, to: &[&dyn Connection]) -> Written {
        Written::copies(to.len(), 10)
    }
}

struct Sock;

impl Connection for Sock {
    fn outlet(&self) -> usize {
        0
    }
    fn user(&self) -> Option<&UserId> {
        None
    }
    fn kick(&self) {}
    fn shed(&self) {}
    fn removed(&self, _: &ConversationId) {}
}

#[test]
fn connections_are_counted_by_outlet_and_frames_once_per_rendering() {
    let hub = Hub::new(Arc::new(MemoryBus::new(Arc::new(Inlet::default()))));
    assert_eq!(hub.add_outlet(Arc::new(Plain)), 0);
    let open = METRICS.connections.with_label_values(&["phoenix", "/hub-test"]);
    let (a, b) = (hub.local(ConnId("a".into())), hub.local(ConnId("b".into())));
    hub.attach(&a, Arc::new(Sock));
    hub.attach(&b, Arc::new(Sock));
    assert_eq!(open.get(), 2);
    let (frames, bytes) = (METRICS.outbound_frames.get(), METRICS.outbound_bytes.get());
    let event = Event::Disconnect(UserRef { user_id: "u".into() });
    hub.deliver(Arc::new(Delivery::to(Topic::All, event)));
    // Other tests write frames concurrently: at least ours.
    assert!(METRICS.outbound_frames.get() >= frames + 2);
    assert!(METRICS.outbound_bytes.get() >= bytes + 20);
    hub.detach(a.key);
    hub.detach(a.key);
    assert_eq!(open.get(), 1, "a connection detached twice counts once");
    hub.detach(b.key);
    assert_eq!(open.get(), 0);
}
