//! The swarm's parts: transport, behaviours, gossipsub settings, and the sync codec.

use super::{NetConfig, NetworkError};
use agora_protocol::join::{self, JoinRequest, JoinResponse};
use agora_protocol::sync::{self, SyncDecodeError, SyncRequest, SyncResponse};
use agora_protocol::Contribution;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::gossipsub::{self, MessageId};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{behaviour::toggle::Toggle, NetworkBehaviour};
use libp2p::{identify, mdns, noise, tcp, yamux, StreamProtocol, Swarm};
use std::io;
use std::time::Duration;

/// Identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/agora/id/1.0.0";

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub gossipsub: gossipsub::Behaviour,
    pub sync: request_response::Behaviour<SyncCodec>,
    pub join: request_response::Behaviour<JoinCodec>,
    pub identify: identify::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
}

/// The content-addressed gossip message id: SHA-256 of the payload (the encoded contribution).
/// Specified in `docs/PROTOCOL.md`: every implementation must use the same function.
pub fn message_id(data: &[u8]) -> MessageId {
    MessageId::from(Contribution::wire_id(data).to_vec())
}

/// The gossipsub settings of a node (and of raw test peers that must speak like one): small-mesh
/// parameters, application validation, content-addressed message ids.
pub fn gossipsub_config(heartbeat: Duration) -> Result<gossipsub::Config, NetworkError> {
    gossipsub::ConfigBuilder::default()
        .mesh_n(3)
        .mesh_n_low(1)
        .mesh_n_high(6)
        .mesh_outbound_min(1)
        .heartbeat_initial_delay(Duration::from_millis(200))
        .heartbeat_interval(heartbeat)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(64 * 1024)
        .message_id_fn(|m: &gossipsub::Message| message_id(&m.data))
        .build()
        .map_err(|e| NetworkError::Setup(e.to_string()))
}

pub(crate) fn topic_score_params() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        // Keep every reward small, so that one invalid contribution outweighs any amount of
        // good standing: the defaults (time in the mesh counted per millisecond, up to 3600)
        // let a peer that had been in the mesh for a few seconds forge with impunity.
        time_in_mesh_weight: 0.1,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 10.0,
        first_message_deliveries_weight: 0.5,
        first_message_deliveries_cap: 10.0,
        // Spaces are quiet most of the time: do not punish peers for not delivering.
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        // Invalid contributions (bad signature, forged actor) are what we punish.
        invalid_message_deliveries_weight: -100.0,
        invalid_message_deliveries_decay: 0.9,
        ..Default::default()
    }
}

fn peer_score_params() -> gossipsub::PeerScoreParams {
    gossipsub::PeerScoreParams {
        // A LAN office and every test share few IPs: colocation is normal here.
        ip_colocation_factor_weight: 0.0,
        ..Default::default()
    }
}

/// Carries sync messages as the protocol crate encodes them: one message per stream direction,
/// no length prefix, read to the end of the stream with the protocol's size limits. A message
/// over its limit or one that does not decode fails with an I/O error whose inner error is the
/// [`SyncDecodeError`], so the event loop can tell the service exactly what happened.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SyncCodec;

async fn read_limited<T: AsyncRead + Unpin + Send>(io: &mut T, max: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    // One byte past the limit tells "too long" from "exactly the limit".
    io.take(max + 1).read_to_end(&mut bytes).await?;
    Ok(bytes)
}

fn invalid(e: SyncDecodeError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = SyncRequest;
    type Response = SyncResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SyncRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_limited(io, sync::MAX_REQUEST_BYTES).await?;
        SyncRequest::decode(&bytes).map_err(invalid)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SyncResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_limited(io, sync::MAX_RESPONSE_BYTES).await?;
        SyncResponse::decode(&bytes).map_err(invalid)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: SyncRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&request.encode()).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: SyncResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&response.encode()).await
    }
}

/// Carries the join exchange (`/agora/join/2`): one canonical CBOR message per stream
/// direction, read to the end of the stream within the protocol's size limits.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct JoinCodec;

fn invalid_join(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl request_response::Codec for JoinCodec {
    type Protocol = StreamProtocol;
    type Request = JoinRequest;
    type Response = JoinResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<JoinRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_limited(io, join::MAX_JOIN_REQUEST_BYTES as u64).await?;
        JoinRequest::decode(&bytes).map_err(invalid_join)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<JoinResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_limited(io, join::MAX_JOIN_RESPONSE_BYTES as u64).await?;
        JoinResponse::decode(&bytes).map_err(invalid_join)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: JoinRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&request.encode()).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: JoinResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&response.encode()).await
    }
}

/// The decode error inside an I/O error made by [`SyncCodec`], if that is what it is.
pub(crate) fn decode_error(e: &io::Error) -> Option<&SyncDecodeError> {
    e.get_ref()?.downcast_ref::<SyncDecodeError>()
}

/// Builds the swarm (not yet listening).
pub(crate) fn build_swarm(
    seed: [u8; 32],
    config: &NetConfig,
) -> Result<Swarm<Behaviour>, NetworkError> {
    // `ed25519_from_bytes` zeroes the buffer it is given: hand it a copy.
    let mut secret = seed;
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(&mut secret)
        .map_err(|e| NetworkError::Setup(e.to_string()))?;
    let gs_config = gossipsub_config(config.heartbeat)?;
    let use_mdns = config.mdns;
    // The transport's timeout is a backstop: the service times its requests out first.
    let request_timeout = config.sync_timeout + Duration::from_secs(5);
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| NetworkError::Setup(e.to_string()))?
        .with_behaviour(|key| {
            let mut gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gs_config,
            )?;
            gossipsub.with_peer_score(
                peer_score_params(),
                gossipsub::PeerScoreThresholds::default(),
            )?;
            let identify = identify::Behaviour::new(identify::Config::new(
                IDENTIFY_PROTOCOL.into(),
                key.public(),
            ));
            let mdns = if use_mdns {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    key.public().to_peer_id(),
                )?)
            } else {
                None
            };
            let sync = request_response::Behaviour::with_codec(
                SyncCodec,
                [(
                    StreamProtocol::new(sync::SYNC_PROTOCOL),
                    ProtocolSupport::Full,
                )],
                request_response::Config::default().with_request_timeout(request_timeout),
            );
            let join = request_response::Behaviour::with_codec(
                JoinCodec,
                [(
                    StreamProtocol::new(join::JOIN_PROTOCOL),
                    ProtocolSupport::Full,
                )],
                request_response::Config::default().with_request_timeout(request_timeout),
            );
            Ok(Behaviour {
                gossipsub,
                sync,
                join,
                identify,
                mdns: Toggle::from(mdns),
            })
        })
        .map_err(|e| NetworkError::Setup(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    Ok(swarm)
}
