//! Running a handler at once when it need not wait.
//!
//! A WebSocket frame is handled synchronously unless it must wait (a flush,
//! setting the alarm): handing every frame's future to a promise costs a
//! microtask and its closures each time (about 3 % of intake's CPU in a
//! workerd profile). [`start`] polls the future once; if it is not done, the
//! rest is a future for the runtime's executor.
//!
//! A future may keep only the waker of the poll that started its wait
//! (`worker::Delay`, a timer, does), so that first poll's waker relays to
//! the waker of the executor's task once it runs.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// What the first poll of a future found.
pub(crate) enum Started<T, F> {
    /// It finished.
    Done(T),
    /// It waits; poll this (it owns the future) to go on.
    Waiting(F),
}

/// Polls `future` once.
pub(crate) fn start<F: Future>(future: F) -> Started<F::Output, impl Future<Output = F::Output>> {
    let mut future = Box::pin(future);
    let relay = Arc::new(Relay::default());
    let first = Waker::from(Arc::clone(&relay));
    match future.as_mut().poll(&mut Context::from_waker(&first)) {
        Poll::Ready(output) => Started::Done(output),
        Poll::Pending => Started::Waiting(std::future::poll_fn(move |cx| {
            relay.set(cx.waker());
            future.as_mut().poll(cx)
        })),
    }
}

/// Wakes the task that took a future over. Woken before the task first ran,
/// it need not: the task polls the future when it starts.
#[derive(Default)]
struct Relay(Mutex<Option<Waker>>);

impl Relay {
    fn set(&self, waker: &Waker) {
        if let Ok(mut slot) = self.0.lock() {
            if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
                *slot = Some(waker.clone());
            }
        }
    }
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let waker = self.0.lock().ok().and_then(|slot| slot.clone());
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::LocalPool;
    use futures::task::LocalSpawnExt;
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    /// A timer as `worker::Delay` is: it keeps the waker of its first poll
    /// only, and wakes it when it fires.
    #[derive(Clone, Default)]
    struct Timer {
        fired: Rc<Cell<bool>>,
        waker: Rc<RefCell<Option<Waker>>>,
    }

    impl Timer {
        fn fire(&self) {
            self.fired.set(true);
            if let Some(waker) = self.waker.borrow().as_ref() {
                waker.wake_by_ref();
            }
        }
        async fn wait(&self) {
            std::future::poll_fn(|cx| {
                if self.fired.get() {
                    return Poll::Ready(());
                }
                self.waker
                    .borrow_mut()
                    .get_or_insert_with(|| cx.waker().clone());
                Poll::Pending
            })
            .await
        }
    }

    #[test]
    fn a_future_that_need_not_wait_is_done_at_once() {
        assert!(matches!(start(async { 7 }), Started::Done(7)));
    }

    #[test]
    fn a_future_waiting_on_its_first_waker_is_woken_through_the_task() {
        for fire_before_the_task_runs in [false, true] {
            let timer = Timer::default();
            let done = Rc::new(Cell::new(false));
            let handler = {
                let (timer, done) = (timer.clone(), Rc::clone(&done));
                async move {
                    timer.wait().await;
                    done.set(true);
                }
            };
            let Started::Waiting(rest) = start(handler) else {
                panic!("the handler waits for its timer");
            };
            let mut pool = LocalPool::new();
            pool.spawner().spawn_local(rest).unwrap();
            if fire_before_the_task_runs {
                timer.fire();
            } else {
                pool.run_until_stalled();
                assert!(!done.get());
                timer.fire();
            }
            pool.run_until_stalled();
            assert!(
                done.get(),
                "fired before the task ran: {fire_before_the_task_runs}"
            );
        }
    }
}
