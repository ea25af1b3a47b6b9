//! A bounded queue whose slots hold boxes: what a session's queues (rtcd's events, commands and
//! lobby notices; the proxy's relay commands and events) are made with.
//!
//! Why boxes: a tokio channel allocates its slots 32 at a time, the first block when it is
//! made. A session's messages are 70-140 bytes, so each queue cost its session 2-4 KiB for a
//! queue that rarely holds more than a few messages (issue 33, 2026-12-07: about 16 KiB per
//! participant across both daemons). Boxed, a slot is a pointer; a message pays one allocation
//! when sent, which a session's rare messages (never a media packet) afford.
//!
//! The ends take and give the message itself: the boxing is this module's business. Bounded
//! as `tokio::sync::mpsc` is, with its semantics: `send` waits for room, `try_send` gives the
//! message back when the queue is full or closed, `recv` is cancel-safe.

use tokio::sync::mpsc;
pub use tokio::sync::mpsc::error::{SendError, TryRecvError, TrySendError};

/// A queue of at most `capacity` messages.
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = mpsc::channel(capacity);
    (Sender(tx), Receiver(rx))
}

/// The sending end; clones send to the same queue.
#[derive(Debug)]
pub struct Sender<T>(mpsc::Sender<Box<T>>);

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Sender<T> {
    /// Queues `message`, waiting for room; the message back if the receiver is gone.
    pub async fn send(&self, message: T) -> Result<(), SendError<T>> {
        self.0
            .send(Box::new(message))
            .await
            .map_err(|SendError(m)| SendError(*m))
    }

    /// Queues `message` if there is room now; the message back if full or closed.
    pub fn try_send(&self, message: T) -> Result<(), TrySendError<T>> {
        self.0.try_send(Box::new(message)).map_err(|e| match e {
            TrySendError::Full(m) => TrySendError::Full(*m),
            TrySendError::Closed(m) => TrySendError::Closed(*m),
        })
    }

    /// Resolves when the receiver is gone.
    pub async fn closed(&self) {
        self.0.closed().await
    }
}

/// The receiving end.
#[derive(Debug)]
pub struct Receiver<T>(mpsc::Receiver<Box<T>>);

impl<T> Receiver<T> {
    /// The next message; `None` once every sender is gone and the queue is empty. Cancel-safe.
    pub async fn recv(&mut self) -> Option<T> {
        self.0.recv().await.map(|m| *m)
    }

    /// The next message if one is queued.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.0.try_recv().map(|m| *m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_come_out_in_order_and_a_full_or_closed_queue_gives_them_back() {
        let (tx, mut rx) = channel::<String>(2);
        tx.send("a".into()).await.unwrap();
        tx.clone().try_send("b".into()).unwrap();
        assert!(matches!(tx.try_send("c".into()), Err(TrySendError::Full(m)) if m == "c"));
        assert_eq!(rx.recv().await.as_deref(), Some("a"));
        assert_eq!(rx.try_recv().as_deref(), Ok("b"));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        drop(rx);
        tx.closed().await;
        assert!(matches!(tx.try_send("d".into()), Err(TrySendError::Closed(m)) if m == "d"));
        assert_eq!(tx.send("e".into()).await.unwrap_err().0, "e");
    }

    #[tokio::test]
    async fn the_receiver_ends_when_every_sender_is_gone() {
        let (tx, mut rx) = channel::<u8>(1);
        tx.send(1).await.unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, None);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }
}
