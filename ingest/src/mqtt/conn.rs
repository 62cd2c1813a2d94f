//! One device connection: CONNECT and authentication, then PUBLISH →
//! decode → appender → PUBACK, in order, with keep-alive and limits.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::v4::{self, PacketType, V4};
use rumqttd::protocol::{
    ConnAck, ConnectReturnCode, Packet, PingResp, Protocol, PubAck, PubAckReason, Publish, SubAck,
    SubscribeReasonCode, UnsubAck,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;

use super::Shared;
use super::appender::{Job, Outcome};
use super::stats::MqttStats;
use crate::auth::{AuthError, Role};
use crate::payload;

/// Why a connection ends; logged at debug except where noted.
#[derive(Debug)]
enum Close {
    /// The client sent DISCONNECT or closed its socket.
    Peer,
    /// Malformed or forbidden packet: counted in `protocol_errors`.
    Protocol(String),
    /// A PUBLISH outside the device's topics: counted in `acl_denied`.
    Acl,
    /// An append failed: nothing more is acknowledged on this connection.
    AppendFailed,
    /// Read or write failed, or timed out.
    Io(String),
    /// A newer connection of the same device.
    TakenOver,
    /// Server shutdown, after the in-flight messages were answered.
    Shutdown,
}

/// A QoS 1 message waiting for its outcome, in arrival order.
struct Pending {
    pkid: u16,
    /// Readings in the message; a `Stored` outcome must account for all.
    rows: usize,
    rx: oneshot::Receiver<Outcome>,
    received: Instant,
}

/// A byte stream a device talks over: TCP, or TLS over TCP.
pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

struct Conn<'a, S> {
    socket: S,
    peer: SocketAddr,
    buf: BytesMut,
    out: BytesMut,
    shared: &'a Shared,
    /// Set after a successful CONNECT.
    device: String,
    decoder: payload::Decoder,
    last_packet: Instant,
}

/// Serves one socket until it closes.
pub(super) async fn serve<S: Stream>(
    socket: S,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conn = Conn {
        socket,
        peer,
        buf: BytesMut::with_capacity(4096),
        out: BytesMut::with_capacity(64),
        shared,
        device: String::new(),
        decoder: shared.deps.decoder.clone(),
        last_packet: Instant::now(),
    };
    // A shutdown does not wait for a client that is still logging in.
    let handshake = tokio::select! {
        r = conn.handshake() => r,
        () = super::stopped(&mut stop) => Err(Close::Shutdown),
    };
    let keep_alive = match handshake {
        Ok(keep_alive) => keep_alive,
        Err(why) => {
            conn.log_close(&why);
            return;
        }
    };
    let (id, kick) = shared.sessions.take_over(&conn.device, &shared.stats);
    let why = conn.run(keep_alive, &kick, stop).await;
    shared.sessions.release(&conn.device, id);
    conn.log_close(&why);
    // Bounded: over TLS this writes close_notify, which a client that
    // stopped reading would never take, pinning the task and its slot.
    let _ = tokio::time::timeout(shared.config.connect_timeout, conn.socket.shutdown()).await;
}

impl<S: Stream> Conn<'_, S> {
    /// Reads the CONNECT within `connect_timeout`, authenticates, answers
    /// CONNACK. Returns the keep-alive the client asked for.
    async fn handshake(&mut self) -> Result<Duration, Close> {
        let timeout = self.shared.config.connect_timeout;
        let packet = match tokio::time::timeout(timeout, self.read_packet()).await {
            Ok(p) => p?,
            Err(_) => return Err(Close::Io("no CONNECT within connect_timeout".into())),
        };
        let Packet::Connect(connect, _, _will, _, login) = packet else {
            return Err(self.protocol("the first packet must be CONNECT"));
        };
        let Some(login) = login.filter(|l| !l.username.is_empty()) else {
            return self
                .refuse(ConnectReturnCode::NotAuthorized, "no credentials")
                .await;
        };
        if connect.client_id != login.username {
            return self
                .refuse(
                    ConnectReturnCode::ClientIdentifierNotValid,
                    "client id differs from username",
                )
                .await;
        }
        // Never log `login.password`.
        let answer = self.shared.deps.verifier.verify_async(
            &login.username,
            &login.password,
            Some(self.peer.ip()),
        );
        let answer = answer.await;
        drop(login.password);
        self.device = login.username;
        let code = match answer {
            Ok(Role::Device) => ConnectReturnCode::Success,
            Ok(_) => ConnectReturnCode::NotAuthorized,
            Err(AuthError::Denied | AuthError::LockedOut { .. }) => {
                ConnectReturnCode::BadUserNamePassword
            }
            Err(AuthError::Throttled | AuthError::Busy | AuthError::Unavailable) => {
                ConnectReturnCode::ServiceUnavailable
            }
        };
        if code != ConnectReturnCode::Success {
            let why = match answer {
                Ok(role) => format!("role {role} may not publish"),
                Err(e) => e.to_string(),
            };
            return self.refuse(code, &why).await;
        }
        // Accepting would only lose what the device sends next; refused, a
        // meter keeps its readings queued and retries.
        if let Some(cause) = self.shared.deps.store.write_failure() {
            let why = format!("the store accepts no writes: {cause}");
            return self
                .refuse(ConnectReturnCode::ServiceUnavailable, &why)
                .await;
        }
        self.send(Packet::ConnAck(
            ConnAck {
                // No sessions are kept, whatever clean_session asked.
                session_present: false,
                code,
            },
            None,
        ))
        .await?;
        MqttStats::inc(&self.shared.stats.connects_ok);
        tracing::debug!(device = %self.device, peer = %self.peer, "MQTT device connected");
        Ok(Duration::from_secs(u64::from(connect.keep_alive)))
    }

    async fn refuse(&mut self, code: ConnectReturnCode, why: &str) -> Result<Duration, Close> {
        MqttStats::inc(&self.shared.stats.connects_denied);
        // Rate-limited per address: a scanner must not flood the log.
        if self.shared.login_log.allow(&self.peer.ip().to_string()) {
            tracing::info!(peer = %self.peer, device = %self.device, ?code, "MQTT login refused: {why}");
        } else {
            tracing::debug!(peer = %self.peer, device = %self.device, ?code, "MQTT login refused: {why}");
        }
        let _ = self
            .send(Packet::ConnAck(
                ConnAck {
                    session_present: false,
                    code,
                },
                None,
            ))
            .await;
        Err(Close::Peer)
    }

    /// The connected phase.
    async fn run(
        &mut self,
        keep_alive: Duration,
        kick: &Notify,
        mut stop: watch::Receiver<bool>,
    ) -> Close {
        let max_inflight = self.shared.config.max_inflight;
        // 3.1.1 §3.1.2.10: one and a half times the keep-alive.
        let idle_limit = (!keep_alive.is_zero()).then(|| keep_alive + keep_alive / 2);
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut stopping = false;
        self.last_packet = Instant::now();
        loop {
            if !stopping && let Err(why) = self.process_buffered(&mut pending).await {
                return why;
            }
            if stopping && pending.is_empty() {
                return Close::Shutdown;
            }
            let can_read = !stopping && pending.len() < max_inflight;
            let idle_deadline = self.last_packet + idle_limit.unwrap_or(Duration::ZERO);
            tokio::select! {
                biased;
                () = kick.notified() => return Close::TakenOver,
                () = super::stopped(&mut stop), if !stopping => stopping = true,
                outcome = front(&mut pending), if !pending.is_empty() => {
                    // One group commit settles many messages at once: queue
                    // the PUBACKs of every settled message at the front, in
                    // order, and write them with one syscall.
                    let mut next = outcome.ok();
                    let mut closing = None;
                    while let Some(p) = pending.pop_front() {
                        if let Err(why) = self.answer(p, next) {
                            closing = Some(why);
                            break;
                        }
                        next = match pending.front_mut().map(|p| p.rx.try_recv()) {
                            Some(Ok(o)) => Some(o),
                            Some(Err(oneshot::error::TryRecvError::Closed)) => None,
                            Some(Err(oneshot::error::TryRecvError::Empty)) | None => break,
                        };
                    }
                    // PUBACKs already queued are for stored messages: send
                    // them even when closing.
                    let flushed = self.flush().await;
                    if let Some(why) = closing {
                        return why;
                    }
                    if let Err(why) = flushed {
                        return why;
                    }
                }
                read = self.socket.read_buf(&mut self.buf), if can_read => match read {
                    Ok(0) => return Close::Peer,
                    Ok(_) => {}
                    Err(e) => return Close::Io(e.to_string()),
                },
                () = tokio::time::sleep_until(idle_deadline), if can_read && idle_limit.is_some() => {
                    return Close::Io("keep-alive expired".into());
                }
            }
        }
    }

    /// Handles every complete packet in the buffer, as long as fewer than
    /// `max_inflight` messages wait for their PUBACK.
    async fn process_buffered(&mut self, pending: &mut VecDeque<Pending>) -> Result<(), Close> {
        let max = self.shared.config.max_packet_bytes;
        while pending.len() < self.shared.config.max_inflight {
            let header = match v4::check(self.buf.iter(), max) {
                Ok(h) => h,
                Err(rumqttd::protocol::Error::InsufficientBytes(_)) => {
                    self.reserve_for_next();
                    return Ok(());
                }
                Err(e) => return Err(self.protocol(&format!("bad packet: {e}"))),
            };
            // The codec keeps a PUBLISH's qos and packet id crate-private:
            // read them from the raw frame before decoding it.
            let (qos, pkid) = match header.packet_type() {
                Ok(PacketType::Publish) => publish_qos_pkid(&self.buf, header),
                _ => (0, 0),
            };
            let packet = V4
                .read_mut(&mut self.buf, max)
                .map_err(|e| self.protocol(&format!("bad packet: {e}")))?;
            self.last_packet = Instant::now();
            match packet {
                Packet::Publish(p, _) => self.on_publish(p, qos, pkid, pending).await?,
                Packet::PingReq(_) => self.send(Packet::PingResp(PingResp)).await?,
                Packet::Subscribe(s, _) => {
                    // Devices write; reading is for people on the
                    // subscriber listener.
                    let return_codes = vec![SubscribeReasonCode::Failure; s.filters.len()];
                    let ack = SubAck {
                        pkid: s.pkid,
                        return_codes,
                    };
                    self.send(Packet::SubAck(ack, None)).await?;
                }
                Packet::Unsubscribe(u, _) => {
                    let ack = UnsubAck {
                        pkid: u.pkid,
                        reasons: Vec::new(),
                    };
                    self.send(Packet::UnsubAck(ack, None)).await?;
                }
                Packet::Disconnect(..) => return Err(Close::Peer),
                Packet::Connect(..) => return Err(self.protocol("second CONNECT")),
                other => {
                    let name = packet_name(&other);
                    return Err(self.protocol(&format!("unexpected {name} from a device")));
                }
            }
        }
        Ok(())
    }

    async fn on_publish(
        &mut self,
        p: Publish,
        qos: u8,
        pkid: u16,
        pending: &mut VecDeque<Pending>,
    ) -> Result<(), Close> {
        let stats = &self.shared.stats;
        if qos >= 2 {
            return Err(self.protocol("QoS 2 is not supported; meters use QoS 0 or 1"));
        }
        let Ok(topic) = std::str::from_utf8(&p.topic) else {
            return Err(self.protocol("topic is not UTF-8"));
        };
        if topic.is_empty() || !rumqttd::protocol::valid_topic(topic) {
            return Err(self.protocol("topic is empty or has wildcards"));
        }
        let deps = &self.shared.deps;
        let Some(m) = deps.topics.authorize(&self.device, topic) else {
            MqttStats::inc(&stats.acl_denied);
            if self.shared.acl_log.allow(&self.device) {
                tracing::warn!(device = %self.device, topic, "publish outside the device's topics; closing the connection");
            } else {
                tracing::debug!(device = %self.device, topic, "publish outside the device's topics");
            }
            return Err(Close::Acl);
        };
        // Checked for QoS 0 as well, which hears of no failed append: the
        // closed connection tells the device, whose reconnects are refused
        // until the store can write again.
        if deps.store.write_failure().is_some() {
            MqttStats::inc(&stats.append_failures);
            return Err(Close::AppendFailed);
        }
        MqttStats::inc(if qos == 1 {
            &stats.messages_qos1
        } else {
            &stats.messages_qos0
        });
        let received = Instant::now();
        let now_ns = deps.clock.now_ns();
        let (reply, rx) = oneshot::channel();
        let reply = (qos == 1).then_some(reply);
        match self.decoder.decode(&m, &p.payload, now_ns) {
            Err(e) => {
                MqttStats::inc(&stats.payload_rejected);
                let (err_topic, msg) = payload::reject(&deps.counters, &self.device, topic, &e);
                if !deps.live.publish(&err_topic, msg.as_bytes()) {
                    MqttStats::inc(&stats.live_dropped);
                }
                // Received and handled (refused for good): acknowledged in
                // turn, so a resend loop cannot start.
                if let Some(reply) = reply {
                    let _ = reply.send(Outcome::Rejected);
                }
            }
            Ok(readings) => {
                let job = Job {
                    device: self.device.clone(),
                    topic: topic.to_owned(),
                    // Copied out of the read buffer (a `Bytes` slice would
                    // pin the whole buffer while queued).
                    payload: bytes::Bytes::copy_from_slice(&p.payload),
                    rows: readings.len(),
                    readings,
                    received_ns: now_ns,
                    reply,
                };
                let rows = job.rows;
                // Waits while the appender queue is full: backpressure.
                if self.shared.appender.submit(job).await.is_err() {
                    return Err(Close::Shutdown);
                }
                if qos == 1 {
                    pending.push_back(Pending {
                        pkid,
                        rows,
                        rx,
                        received,
                    });
                }
                return Ok(());
            }
        }
        if qos == 1 {
            pending.push_back(Pending {
                pkid,
                rows: 0,
                rx,
                received,
            });
        }
        Ok(())
    }

    /// Queues the PUBACK for the oldest waiting message (written by the
    /// next [`flush`](Self::flush)), or says why the connection must close.
    /// `outcome` is `None` when the appender dropped the message's reply.
    fn answer(&mut self, p: Pending, outcome: Option<Outcome>) -> Result<(), Close> {
        let stats = &self.shared.stats;
        let ackable = match &outcome {
            Some(Outcome::Stored { rows }) => *rows == p.rows,
            Some(Outcome::Rejected) => true,
            Some(Outcome::Failed) | None => false,
        };
        if !ackable {
            if matches!(outcome, Some(Outcome::Stored { .. })) {
                // The appender claims a different row count: a bug. Never
                // acknowledge what we cannot account for.
                tracing::error!(device = %self.device, ?outcome, expected = p.rows, "row count mismatch; not acknowledging");
            }
            return Err(Close::AppendFailed);
        }
        self.queue_puback(p.pkid, outcome.as_ref())?;
        stats.record_puback(p.received.elapsed());
        Ok(())
    }

    /// The only place a PUBACK is made. Re-checks the durability rule so
    /// that a future change that breaks it shows up in `lost_acknowledged`
    /// instead of silently.
    fn queue_puback(&mut self, pkid: u16, outcome: Option<&Outcome>) -> Result<(), Close> {
        if !matches!(outcome, Some(Outcome::Stored { .. } | Outcome::Rejected)) {
            MqttStats::inc(&self.shared.stats.lost_acknowledged);
            debug_assert!(false, "PUBACK for a message that was not stored");
            return Err(Close::AppendFailed);
        }
        let ack = PubAck {
            pkid,
            reason: PubAckReason::Success,
        };
        self.queue(Packet::PubAck(ack, None))
    }

    /// Reads until one whole packet is buffered (used for CONNECT only).
    async fn read_packet(&mut self) -> Result<Packet, Close> {
        let max = self.shared.config.max_packet_bytes;
        loop {
            match V4.read_mut(&mut self.buf, max) {
                Ok(p) => return Ok(p),
                Err(rumqttd::protocol::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(self.protocol(&format!("bad packet: {e}"))),
            }
            self.reserve_for_next();
            match self.socket.read_buf(&mut self.buf).await {
                Ok(0) => return Err(Close::Peer),
                Ok(_) => {}
                Err(e) => return Err(Close::Io(e.to_string())),
            }
        }
    }

    /// Keeps room for a read without letting the buffer grow beyond one
    /// packet plus a read's worth: `check` refuses any frame longer than
    /// `max_packet_bytes` before it is buffered.
    fn reserve_for_next(&mut self) {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(8 * 1024);
        }
    }

    /// Encodes `packet` and writes everything queued.
    async fn send(&mut self, packet: Packet) -> Result<(), Close> {
        self.queue(packet)?;
        self.flush().await
    }

    /// Encodes `packet` behind what is already queued.
    fn queue(&mut self, packet: Packet) -> Result<(), Close> {
        // Only packets without properties and v4 CONNACK codes are written
        // here, the cases where the codec's `write` cannot panic.
        V4.write(packet, &mut self.out)
            .map_err(|e| Close::Io(format!("encoding: {e}")))?;
        Ok(())
    }

    /// Writes the queued packets.
    async fn flush(&mut self) -> Result<(), Close> {
        if self.out.is_empty() {
            return Ok(());
        }
        let timeout = self.shared.config.connect_timeout;
        let written = tokio::time::timeout(timeout, self.socket.write_all(&self.out)).await;
        self.out.clear();
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Close::Io(e.to_string())),
            Err(_) => Err(Close::Io("write timed out".into())),
        }
    }

    fn protocol(&self, why: &str) -> Close {
        MqttStats::inc(&self.shared.stats.protocol_errors);
        Close::Protocol(why.to_owned())
    }

    fn log_close(&self, why: &Close) {
        let (device, peer) = (&self.device, self.peer);
        match why {
            Close::AppendFailed => {
                tracing::warn!(%device, %peer, "closing MQTT connection: an append failed");
            }
            Close::Protocol(reason) | Close::Io(reason) => {
                tracing::debug!(%device, %peer, "closing MQTT connection: {reason}");
            }
            other => tracing::debug!(%device, %peer, "MQTT connection closed: {other:?}"),
        }
    }
}

/// The outcome of the oldest pending message; never resolves when none.
async fn front(pending: &mut VecDeque<Pending>) -> Result<Outcome, oneshot::error::RecvError> {
    match pending.front_mut() {
        Some(p) => (&mut p.rx).await,
        None => std::future::pending().await,
    }
}

/// QoS and packet id of the PUBLISH framed at the start of `buf`. A frame
/// too short to hold them gives pkid 0; the codec then refuses it.
fn publish_qos_pkid(buf: &[u8], header: v4::FixedHeader) -> (u8, u16) {
    let qos = (header.byte1 >> 1) & 0b11;
    if qos == 0 {
        return (0, 0);
    }
    let at = header.fixed_header_len;
    let byte = |i: usize| buf.get(i).copied().map(u16::from);
    let pkid = (|| {
        let topic_len = usize::from(byte(at)? << 8 | byte(at + 1)?);
        let id = at + 2 + topic_len;
        Some(byte(id)? << 8 | byte(id + 1)?)
    })();
    (qos, pkid.unwrap_or(0))
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::ConnAck(..) => "CONNACK",
        Packet::PubAck(..) => "PUBACK",
        Packet::PubRec(..) => "PUBREC",
        Packet::PubRel(..) => "PUBREL",
        Packet::PubComp(..) => "PUBCOMP",
        Packet::SubAck(..) => "SUBACK",
        Packet::UnsubAck(..) => "UNSUBACK",
        Packet::PingResp(..) => "PINGRESP",
        _ => "packet",
    }
}
