//! A request's single gRPC frame: decoded against its method's input, re-encoded after a change.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::Status;

pub(super) fn decode_frame(
    input: &MessageDescriptor,
    bytes: &Bytes,
) -> Result<DynamicMessage, Status> {
    if bytes.len() < 5 {
        return Err(Status::invalid_argument("the request has no message"));
    }
    if bytes[0] != 0 {
        return Err(Status::unimplemented(
            "compressed requests are not accepted",
        ));
    }
    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    if bytes.len() != 5 + len {
        return Err(Status::invalid_argument(
            "the request must carry exactly one message",
        ));
    }
    DynamicMessage::decode(input.clone(), &bytes[5..])
        .map_err(|e| Status::invalid_argument(format!("the request does not decode: {e}")))
}

pub(super) fn encode_frame(message: &DynamicMessage) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut out = BytesMut::with_capacity(5 + encoded.len());
    out.put_u8(0);
    out.put_u32(encoded.len() as u32);
    out.put_slice(&encoded);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::methods::input_of;

    #[test]
    fn malformed_frames_are_invalid_arguments() {
        let input = input_of("/ebb.lifecycle.v1.LifecycleService/GetWorkspace").expect("input");
        for bytes in [
            Bytes::from_static(b""),
            Bytes::from_static(b"\0\0\0\0\x05ab"),
            Bytes::from_static(b"\0\0\0\0\x02\xff\xff"),
        ] {
            let err = decode_frame(&input, &bytes).expect_err("malformed");
            assert_eq!(err.code(), Code::InvalidArgument, "{bytes:?}");
        }
    }
}
