//! The join exchange: a newcomer with a ticket asks a member to admit it.
//!
//! libp2p request-response, protocol [`JOIN_PROTOCOL`], one request and one response, both
//! canonical CBOR:
//! - request `{"v": 2, "space": bstr(16), "invite": bstr(32), "member": bstr(32),
//!   "device": bstr(32), "redeem": bstr(64), "proof": bstr(64)}`: the redeem of
//!   [`crate::membership::build::Redeem`], for `space`;
//! - response `{"v": 2, "ops": [bstr...]}` (admitted: every membership operation of the space
//!   the member holds, the admission among them) or `{"v": 2, "refused": tstr}` with a stable
//!   reason code (`unknown_space` for a space the member does not hold, which is also what a
//!   non-member asked about any space hears, and the codes of
//!   [`crate::membership::RedeemRefusal`]).

use crate::cbor::{self, CborError, Reader};
use crate::ids::{AuthorId, SpaceId};
use crate::membership::build::Redeem;
use crate::membership::{OpId, MAX_OPS, MAX_OP_BYTES};

/// The libp2p protocol name.
pub const JOIN_PROTOCOL: &str = "/agora/join/2";
/// Largest join request, in bytes.
pub const MAX_JOIN_REQUEST_BYTES: usize = 512;
/// Largest join response, in bytes (the operations of a large space).
pub const MAX_JOIN_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// The refusal code for a space the member does not hold.
pub const UNKNOWN_SPACE: &str = "unknown_space";

/// A join request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// The space.
    pub space: SpaceId,
    /// The redeem.
    pub redeem: Redeem,
}

/// A join response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinResponse {
    /// Admitted: the space's operations.
    Admitted(Vec<Vec<u8>>),
    /// Refused, with a reason code.
    Refused(String),
}

impl JoinRequest {
    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(320);
        cbor::put_head(&mut out, 5, 7);
        cbor::put_key(&mut out, "v");
        cbor::put_head(&mut out, 0, 2);
        for (key, bytes) in [
            ("space", &self.space.0[..]),
            ("invite", &self.redeem.invite.0[..]),
            ("member", &self.redeem.member.0[..]),
            ("device", &self.redeem.device[..]),
            ("redeem", &self.redeem.redeem[..]),
            ("proof", &self.redeem.proof[..]),
        ] {
            cbor::put_key(&mut out, key);
            cbor::put_bytes(&mut out, bytes);
        }
        out
    }

    /// Decodes untrusted bytes (strictly: one encoding per request). Never panics.
    pub fn decode(bytes: &[u8]) -> Result<JoinRequest, CborError> {
        if bytes.len() > MAX_JOIN_REQUEST_BYTES {
            return Err(cbor::err("join request too large"));
        }
        let mut r = Reader::new(bytes);
        r.map(7)?;
        r.key("v")?;
        if r.uint()? != 2 {
            return Err(cbor::err("unsupported join request version"));
        }
        r.key("space")?;
        let space = SpaceId(r.array()?);
        r.key("invite")?;
        let invite = OpId(r.array()?);
        r.key("member")?;
        let member = AuthorId(r.array()?);
        r.key("device")?;
        let device = r.array()?;
        r.key("redeem")?;
        let redeem = r.array()?;
        r.key("proof")?;
        let proof = r.array()?;
        r.end()?;
        Ok(JoinRequest {
            space,
            redeem: Redeem {
                invite,
                member,
                device,
                redeem,
                proof,
            },
        })
    }
}

impl JoinResponse {
    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        cbor::put_head(&mut out, 5, 2);
        cbor::put_key(&mut out, "v");
        cbor::put_head(&mut out, 0, 2);
        match self {
            JoinResponse::Admitted(ops) => {
                cbor::put_key(&mut out, "ops");
                cbor::put_head(&mut out, 4, ops.len() as u64);
                for op in ops {
                    cbor::put_bytes(&mut out, op);
                }
            }
            JoinResponse::Refused(code) => {
                cbor::put_key(&mut out, "refused");
                cbor::put_head(&mut out, 3, code.len() as u64);
                out.extend_from_slice(code.as_bytes());
            }
        }
        out
    }

    /// Decodes untrusted bytes (at most [`MAX_JOIN_RESPONSE_BYTES`], at most [`MAX_OPS`]
    /// operations of at most [`MAX_OP_BYTES`] each, a refusal code of at most 64 bytes). The
    /// operations themselves are verified by the caller.
    pub fn decode(bytes: &[u8]) -> Result<JoinResponse, CborError> {
        if bytes.len() > MAX_JOIN_RESPONSE_BYTES {
            return Err(cbor::err("join response too large"));
        }
        let mut r = Reader::new(bytes);
        r.map(2)?;
        r.key("v")?;
        if r.uint()? != 2 {
            return Err(cbor::err("unsupported join response version"));
        }
        // The second key decides which answer this is.
        let answer = if r.next_is_key("ops") {
            r.key("ops")?;
            let n = r.array_len()?;
            if n > MAX_OPS as u64 {
                return Err(cbor::err("too many operations"));
            }
            let mut ops = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let op = r.bytes()?;
                if op.len() > MAX_OP_BYTES {
                    return Err(cbor::err("operation too large"));
                }
                ops.push(op.to_vec());
            }
            JoinResponse::Admitted(ops)
        } else {
            r.key("refused")?;
            let code = r.text()?;
            if code.len() > 64 {
                return Err(cbor::err("refusal code too long"));
            }
            JoinResponse::Refused(code.to_string())
        };
        r.end()?;
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_messages_round_trip_and_refuse_garbage() {
        let req = JoinRequest {
            space: SpaceId([1; 16]),
            redeem: Redeem {
                invite: OpId([2; 32]),
                member: AuthorId([3; 32]),
                device: [4; 32],
                redeem: [5; 64],
                proof: [6; 64],
            },
        };
        let bytes = req.encode();
        assert_eq!(JoinRequest::decode(&bytes).unwrap(), req);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x80;
            if let Ok(other) = JoinRequest::decode(&b) {
                assert_ne!(other, req, "a flip at {i} decoded to the same request");
            }
        }
        assert!(JoinRequest::decode(&bytes[..bytes.len() - 1]).is_err());
        let ok = JoinResponse::Admitted(vec![vec![1, 2, 3], vec![]]);
        assert_eq!(JoinResponse::decode(&ok.encode()).unwrap(), ok);
        let no = JoinResponse::Refused("expired".into());
        assert_eq!(JoinResponse::decode(&no.encode()).unwrap(), no);
        assert!(JoinResponse::decode(b"\xa2").is_err());
        assert!(JoinResponse::decode(&[]).is_err());
    }
}
