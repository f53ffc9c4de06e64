//! A small blocking HTTP/3 client (quiche over a std UDP socket) for `tessera get
//! --h3` and `tessera put --h3`: one connection, one request at a time.

use std::io::{self, Read};
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use quiche::h3::NameValue;

const MAX_DATAGRAM: usize = 1350;

pub struct H3Client {
    socket: UdpSocket,
    conn: quiche::Connection,
    h3: Option<quiche::h3::Connection>,
    local: SocketAddr,
    authority: String,
    buf: Vec<u8>,
    out: Vec<u8>,
}

/// What a request produced.
pub struct Response {
    pub status: u16,
}

impl H3Client {
    /// Connects to `http(s)://host:port` over QUIC. Node certificates are usually
    /// self-signed, so the peer is not verified unless `ca` names a CA file.
    pub fn connect(node_url: &str, ca: Option<&str>) -> anyhow::Result<H3Client> {
        let authority = node_url
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let peer = authority
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {authority}"))?
            .next()
            .ok_or_else(|| anyhow!("no address for {authority}"))?;
        let bind: SocketAddr = if peer.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()?;
        let socket = UdpSocket::bind(bind)?;
        socket.connect(peer)?;
        let local = socket.local_addr()?;
        let mut config = quiche::Config::new(quiche::PROTOCOL_VERSION)?;
        config.set_application_protos(quiche::h3::APPLICATION_PROTOCOL)?;
        match ca {
            Some(path) => {
                config.load_verify_locations_from_file(path)?;
                config.verify_peer(true);
            }
            None => config.verify_peer(false),
        }
        config.set_max_idle_timeout(30_000);
        config.set_max_recv_udp_payload_size(MAX_DATAGRAM);
        config.set_max_send_udp_payload_size(MAX_DATAGRAM);
        config.set_initial_max_data(64 << 20);
        config.set_initial_max_stream_data_bidi_local(32 << 20);
        config.set_initial_max_stream_data_bidi_remote(32 << 20);
        config.set_initial_max_stream_data_uni(1 << 20);
        config.set_initial_max_streams_bidi(16);
        config.set_initial_max_streams_uni(16);
        let mut scid = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut scid);
        let scid = quiche::ConnectionId::from_ref(&scid).into_owned();
        let host = authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(&authority)
            .trim_matches(|c| c == '[' || c == ']');
        let conn = quiche::connect(Some(host), &scid, local, peer, &mut config)?;
        let mut client = H3Client {
            socket,
            conn,
            h3: None,
            local,
            authority,
            buf: vec![0u8; 65536],
            out: vec![0u8; MAX_DATAGRAM],
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !client.conn.is_established() {
            if Instant::now() > deadline || client.conn.is_closed() {
                bail!(
                    "HTTP/3 handshake with {} failed (is the node's UDP port reachable?)",
                    client.authority
                );
            }
            client.flush()?;
            client.receive()?;
        }
        let h3_config = quiche::h3::Config::new()?;
        client.h3 = Some(quiche::h3::Connection::with_transport(
            &mut client.conn,
            &h3_config,
        )?);
        Ok(client)
    }

    fn flush(&mut self) -> io::Result<()> {
        loop {
            match self.conn.send(&mut self.out) {
                Ok((n, _info)) => {
                    self.socket.send(&self.out[..n])?;
                }
                Err(quiche::Error::Done) => return Ok(()),
                Err(e) => return Err(io::Error::other(e.to_string())),
            }
        }
    }

    /// Waits for one datagram or the connection's timer.
    fn receive(&mut self) -> io::Result<()> {
        let wait = self
            .conn
            .timeout()
            .unwrap_or(Duration::from_millis(100))
            .max(Duration::from_millis(1));
        self.socket.set_read_timeout(Some(wait))?;
        match self.socket.recv(&mut self.buf) {
            Ok(n) => {
                let peer = self.socket.peer_addr()?;
                let info = quiche::RecvInfo {
                    from: peer,
                    to: self.local,
                };
                if let Err(e) = self.conn.recv(&mut self.buf[..n], info) {
                    return Err(io::Error::other(format!("QUIC: {e}")));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                self.conn.on_timeout();
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Sends one request and streams the response body to `on_data`. `body`, if
    /// any, is uploaded with backpressure.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        mut body: Option<(&mut dyn Read, u64)>,
        mut on_data: impl FnMut(u16, &[u8]) -> io::Result<()>,
    ) -> anyhow::Result<Response> {
        let mut headers = vec![
            quiche::h3::Header::new(b":method", method.as_bytes()),
            quiche::h3::Header::new(b":scheme", b"https"),
            quiche::h3::Header::new(b":authority", self.authority.as_bytes()),
            quiche::h3::Header::new(b":path", path.as_bytes()),
            quiche::h3::Header::new(b"user-agent", b"tessera"),
        ];
        let len_text = body.as_ref().map(|(_, len)| len.to_string());
        if let Some(l) = &len_text {
            headers.push(quiche::h3::Header::new(b"content-length", l.as_bytes()));
        }
        for (n, v) in extra {
            headers.push(quiche::h3::Header::new(n.as_bytes(), v.as_bytes()));
        }
        let h3 = self.h3.as_mut().ok_or_else(|| anyhow!("not connected"))?;
        let stream = h3.send_request(&mut self.conn, &headers, body.is_none())?;
        let mut pending: Vec<u8> = Vec::new();
        let mut pending_off = 0;
        let mut body_done = body.is_none();
        let mut status = None;
        let mut chunk = vec![0u8; 65536];
        loop {
            // Upload: keep quiche's stream buffer topped up.
            while !body_done {
                if pending_off == pending.len() {
                    let Some((reader, _)) = body.as_mut() else {
                        break;
                    };
                    pending.resize(64 * 1024, 0);
                    let n = reader.read(&mut pending)?;
                    pending.truncate(n);
                    pending_off = 0;
                    if n == 0 {
                        let h3 = self.h3.as_mut().ok_or_else(|| anyhow!("not connected"))?;
                        match h3.send_body(&mut self.conn, stream, &[], true) {
                            Ok(_) => body_done = true,
                            Err(quiche::h3::Error::Done) => {}
                            Err(e) => bail!("upload failed: {e}"),
                        }
                        break;
                    }
                }
                let h3 = self.h3.as_mut().ok_or_else(|| anyhow!("not connected"))?;
                match h3.send_body(&mut self.conn, stream, &pending[pending_off..], false) {
                    Ok(0) | Err(quiche::h3::Error::Done) => break,
                    Ok(n) => pending_off += n,
                    Err(e) => bail!("upload failed: {e}"),
                }
            }
            self.flush()?;
            if self.conn.is_closed() {
                bail!(
                    "connection closed by the node: {:?}",
                    self.conn.peer_error()
                );
            }
            self.receive()?;
            loop {
                let h3 = self.h3.as_mut().ok_or_else(|| anyhow!("not connected"))?;
                match h3.poll(&mut self.conn) {
                    Ok((s, quiche::h3::Event::Headers { list, .. })) if s == stream => {
                        for h in &list {
                            if h.name() == b":status" {
                                status = std::str::from_utf8(h.value())
                                    .ok()
                                    .and_then(|v| v.parse().ok());
                            }
                        }
                    }
                    Ok((s, quiche::h3::Event::Data)) if s == stream => {
                        let code = status.unwrap_or(0);
                        while let Ok(n) = h3.recv_body(&mut self.conn, stream, &mut chunk) {
                            on_data(code, &chunk[..n])?;
                        }
                    }
                    Ok((s, quiche::h3::Event::Finished)) if s == stream => {
                        self.flush()?;
                        return Ok(Response {
                            status: status.ok_or_else(|| anyhow!("response without :status"))?,
                        });
                    }
                    Ok((s, quiche::h3::Event::Reset(code))) if s == stream => {
                        bail!("the node reset the stream (code {code})");
                    }
                    Ok(_) => {}
                    Err(quiche::h3::Error::Done) => break,
                    Err(e) => bail!("HTTP/3: {e}"),
                }
            }
        }
    }

    pub fn close(mut self) {
        let _ = self.conn.close(true, 0x100, b"");
        let _ = self.flush();
    }
}
