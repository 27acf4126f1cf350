//! The retry rule, as one pure function.
//!
//! - Nothing was sent (the connection could not be opened): the request goes to
//!   the next backend whatever its method, and it does not count as a retry.
//! - Something was sent: only a *safe* request (GET, HEAD, OPTIONS, Letta's
//!   read-only POSTs) whose body can be sent again (empty, or held in memory)
//!   is retried, at most once, on another backend, after a 502/503/504, a
//!   timeout before the response headers, or a broken exchange — and only when
//!   the retry budget allows. A POST that reached a backend is never sent again;
//!   a 409 is never retried.
//! - A failure caused by the client's own body is the client's: never retried.

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The backend answered with this status.
    Answered(u16),
    /// No connection could be had: nothing was sent.
    NotSent,
    /// No response headers within `response_header_timeout`.
    TimedOut,
    /// The exchange broke after the request was (or may have been) sent.
    Broken,
    /// Reading the client's body failed (too large, malformed, client gone).
    ClientFault,
}

/// What the request is, for the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Safe to send twice: a read, or a read-only POST.
    pub safe: bool,
    /// Its body can be sent again (empty or in memory).
    pub replayable: bool,
    /// It was already retried once (a connect failure does not count).
    pub retried: bool,
    /// A backend it has not tried yet exists.
    pub others_left: bool,
}

/// Why the request goes to another backend (the `reason` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Connect,
    Status,
    Timeout,
    Error,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::Connect => "connect",
            Reason::Status => "status",
            Reason::Timeout => "timeout",
            Reason::Error => "error",
        }
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Hand the backend's answer to the client.
    Deliver,
    /// Answer the client with this attempt's error.
    Fail,
    /// Try another backend. When `needs_budget` and the retry budget refuses,
    /// do `otherwise` instead.
    Next {
        reason: Reason,
        needs_budget: bool,
        otherwise: Final,
    },
}

/// What happens when a retry is not allowed by the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Final {
    Deliver,
    Fail,
}

/// The rule.
pub fn decide(attempt: Attempt, req: Request) -> Decision {
    let may_resend = req.safe && req.replayable && !req.retried && req.others_left;
    let resend = |reason, otherwise| {
        if may_resend {
            Decision::Next {
                reason,
                needs_budget: true,
                otherwise,
            }
        } else {
            match otherwise {
                Final::Deliver => Decision::Deliver,
                Final::Fail => Decision::Fail,
            }
        }
    };
    match attempt {
        Attempt::Answered(502..=504) => resend(Reason::Status, Final::Deliver),
        Attempt::Answered(_) => Decision::Deliver,
        Attempt::NotSent if req.others_left => Decision::Next {
            reason: Reason::Connect,
            needs_budget: false,
            otherwise: Final::Fail,
        },
        Attempt::NotSent => Decision::Fail,
        Attempt::TimedOut => resend(Reason::Timeout, Final::Fail),
        Attempt::Broken => resend(Reason::Error, Final::Fail),
        Attempt::ClientFault => Decision::Fail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: Request = Request {
        safe: true,
        replayable: true,
        retried: false,
        others_left: true,
    };
    /// A POST (streamed body, not safe).
    const POST: Request = Request {
        safe: false,
        replayable: false,
        retried: false,
        others_left: true,
    };

    fn next(reason: Reason, otherwise: Final) -> Decision {
        Decision::Next {
            reason,
            needs_budget: true,
            otherwise,
        }
    }

    const CONNECT: Decision = Decision::Next {
        reason: Reason::Connect,
        needs_budget: false,
        otherwise: Final::Fail,
    };

    #[test]
    fn the_rule() {
        let last = Request {
            others_left: false,
            ..GET
        };
        let retried = Request {
            retried: true,
            ..GET
        };
        let big_read = Request {
            replayable: false,
            ..GET
        };
        let small_post = Request {
            replayable: true,
            ..POST
        };
        let cases: &[(Attempt, Request, Decision)] = &[
            // Answers are delivered, 502/503/504 to a safe request retried once.
            (Attempt::Answered(200), GET, Decision::Deliver),
            (Attempt::Answered(404), GET, Decision::Deliver),
            (Attempt::Answered(409), GET, Decision::Deliver),
            (Attempt::Answered(500), GET, Decision::Deliver),
            (
                Attempt::Answered(502),
                GET,
                next(Reason::Status, Final::Deliver),
            ),
            (
                Attempt::Answered(503),
                GET,
                next(Reason::Status, Final::Deliver),
            ),
            (
                Attempt::Answered(504),
                GET,
                next(Reason::Status, Final::Deliver),
            ),
            (Attempt::Answered(503), retried, Decision::Deliver),
            (Attempt::Answered(503), last, Decision::Deliver),
            (Attempt::Answered(503), big_read, Decision::Deliver),
            // A POST that reached a backend is sent at most once.
            (Attempt::Answered(503), POST, Decision::Deliver),
            (Attempt::Answered(503), small_post, Decision::Deliver),
            (Attempt::Answered(409), POST, Decision::Deliver),
            (Attempt::Broken, POST, Decision::Fail),
            (Attempt::Broken, small_post, Decision::Fail),
            (Attempt::TimedOut, POST, Decision::Fail),
            // Nothing sent: any method moves on, without counting as a retry.
            (Attempt::NotSent, POST, CONNECT),
            (Attempt::NotSent, GET, CONNECT),
            (Attempt::NotSent, retried, CONNECT),
            (
                Attempt::NotSent,
                Request {
                    others_left: false,
                    ..POST
                },
                Decision::Fail,
            ),
            // Safe requests: timeouts and broken exchanges retried once.
            (Attempt::TimedOut, GET, next(Reason::Timeout, Final::Fail)),
            (Attempt::Broken, GET, next(Reason::Error, Final::Fail)),
            (Attempt::Broken, retried, Decision::Fail),
            (Attempt::TimedOut, last, Decision::Fail),
            // The client's own body: never retried.
            (Attempt::ClientFault, GET, Decision::Fail),
            (Attempt::ClientFault, POST, Decision::Fail),
        ];
        for (attempt, req, want) in cases {
            assert_eq!(decide(*attempt, *req), *want, "{attempt:?} {req:?}");
        }
    }
}
