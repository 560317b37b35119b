//! The RFC 5354 type-length-value layer: reading a sequence of parameters
//! with length checks and unknown-type handling, and writing parameters with
//! their lengths patched in and their padding added.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::param::{CauseCode, ErrorCause, ParamType};

/// Bytes of a parameter header (type and length).
pub(crate) const TLV_HEADER: usize = 4;

/// Rounds `n` up to the next multiple of four.
pub(crate) const fn padded(n: usize) -> usize {
    (n + 3) & !3
}

/// One parameter as it appears on the wire.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawParam<'a> {
    /// The type field, action bits included.
    pub(crate) raw_type: u16,
    /// The value: `length - 4` bytes after the header.
    pub(crate) value: &'a [u8],
    /// Header and value, without padding.
    pub(crate) whole: &'a [u8],
}

impl RawParam<'_> {
    /// The parameter as owned bytes, for error reports.
    pub(crate) fn to_bytes(self) -> Bytes {
        Bytes::copy_from_slice(self.whole)
    }
}

/// Reads the parameters of one enclosing structure (a message body or a
/// parameter that holds parameters) in order.
///
/// Unknown parameter types are handled by their action bits (RFC 5354
/// section 3): bits `00`/`01` stop decoding with
/// [`DecodeError::UnrecognizedParameter`], bits `10`/`11` skip the parameter;
/// for `01`/`11` a report (error cause "Unrecognized Parameter") is pushed to
/// `reports`.
pub(crate) struct ParamReader<'a, 'r> {
    buf: &'a [u8],
    pos: usize,
    context: &'static str,
    reports: &'r mut Vec<ErrorCause>,
    /// Bit per [`ParamType`] taken so far, to tell a duplicate from a
    /// misplaced parameter.
    seen: u32,
}

impl<'a, 'r> ParamReader<'a, 'r> {
    pub(crate) fn new(
        buf: &'a [u8],
        context: &'static str,
        reports: &'r mut Vec<ErrorCause>,
    ) -> Self {
        Self {
            buf,
            pos: 0,
            context,
            reports,
            seen: 0,
        }
    }

    /// A reader for the parameters nested in `value`, sharing this reader's
    /// reports.
    pub(crate) fn nested<'b>(
        &'b mut self,
        value: &'b [u8],
        context: &'static str,
    ) -> ParamReader<'b, 'b> {
        ParamReader::new(value, context, self.reports)
    }

    /// Bytes not yet read.
    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Reads the parameter at the current position without consuming it.
    #[inline]
    fn peek_raw(&self) -> Result<Option<(RawParam<'a>, usize)>, DecodeError> {
        let rest = &self.buf[self.pos..];
        if rest.is_empty() {
            return Ok(None);
        }
        if rest.len() < TLV_HEADER {
            return Err(DecodeError::Truncated {
                what: "parameter header",
                needed: TLV_HEADER,
                available: rest.len(),
            });
        }
        let raw_type = u16::from_be_bytes([rest[0], rest[1]]);
        let length = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        if length > rest.len() {
            return Err(DecodeError::ParameterOverrun {
                param_type: raw_type,
                declared: length,
                available: rest.len(),
                tlv: Bytes::copy_from_slice(rest),
            });
        }
        if length < TLV_HEADER {
            let whole = &rest[..TLV_HEADER];
            return Err(match ParamType::from_raw(raw_type) {
                Some(param) => DecodeError::ParameterLength {
                    param,
                    length,
                    tlv: Bytes::copy_from_slice(whole),
                },
                None => DecodeError::UnrecognizedParameter {
                    param_type: raw_type,
                    report: raw_type & 0x4000 != 0,
                    tlv: Bytes::copy_from_slice(whole),
                },
            });
        }
        // The last parameter of a structure may come without its padding.
        let step = padded(length).min(rest.len());
        let whole = &rest[..length];
        Ok(Some((
            RawParam {
                raw_type,
                value: &whole[TLV_HEADER..],
                whole,
            },
            step,
        )))
    }

    /// Skips unknown parameters as their action bits allow and returns the
    /// next known one without consuming it.
    #[inline]
    fn peek_known(&mut self) -> Result<Option<(ParamType, RawParam<'a>, usize)>, DecodeError> {
        loop {
            let Some((raw, step)) = self.peek_raw()? else {
                return Ok(None);
            };
            if let Some(param) = ParamType::from_raw(raw.raw_type) {
                return Ok(Some((param, raw, step)));
            }
            let report = raw.raw_type & 0x4000 != 0;
            if raw.raw_type & 0x8000 == 0 {
                return Err(DecodeError::UnrecognizedParameter {
                    param_type: raw.raw_type,
                    report,
                    tlv: raw.to_bytes(),
                });
            }
            if report {
                self.reports.push(ErrorCause {
                    code: CauseCode::UNRECOGNIZED_PARAMETER,
                    info: raw.to_bytes(),
                });
            }
            self.pos += step;
        }
    }

    /// Takes the next parameter if it is of type `expected`.
    #[inline]
    pub(crate) fn take_if(
        &mut self,
        expected: ParamType,
    ) -> Result<Option<RawParam<'a>>, DecodeError> {
        Ok(self.take_if_where(|p| p == expected)?.map(|(_, raw)| raw))
    }

    /// Takes the next parameter if its type is one that `accept` accepts.
    #[inline]
    pub(crate) fn take_if_where(
        &mut self,
        accept: impl Fn(ParamType) -> bool,
    ) -> Result<Option<(ParamType, RawParam<'a>)>, DecodeError> {
        match self.peek_known()? {
            Some((param, raw, step)) if accept(param) => {
                self.pos += step;
                self.seen |= param.bit();
                Ok(Some((param, raw)))
            }
            _ => Ok(None),
        }
    }

    /// Takes the next parameter, which must be of type `expected`.
    #[inline]
    pub(crate) fn take(&mut self, expected: ParamType) -> Result<RawParam<'a>, DecodeError> {
        Ok(self.take_where(|p| p == expected, expected)?.1)
    }

    /// Takes the next parameter, whose type `accept` must accept;
    /// `expected` names what was wanted if nothing comes.
    #[inline]
    pub(crate) fn take_where(
        &mut self,
        accept: impl Fn(ParamType) -> bool,
        expected: ParamType,
    ) -> Result<(ParamType, RawParam<'a>), DecodeError> {
        if let Some(taken) = self.take_if_where(&accept)? {
            return Ok(taken);
        }
        match self.peek_known()? {
            Some((found, raw, _)) => Err(self.misplaced(found, raw)),
            None => Err(DecodeError::MissingParameter {
                context: self.context,
                expected,
            }),
        }
    }

    /// Takes the next parameter, whatever its (known) type.
    #[inline]
    pub(crate) fn take_any(&mut self) -> Result<Option<(ParamType, RawParam<'a>)>, DecodeError> {
        Ok(self.peek_known()?.map(|(param, raw, step)| {
            self.pos += step;
            self.seen |= param.bit();
            (param, raw)
        }))
    }

    /// Checks that nothing but skippable unknown parameters is left.
    #[inline]
    pub(crate) fn finish(mut self) -> Result<(), DecodeError> {
        match self.peek_known()? {
            None => Ok(()),
            Some((found, raw, _)) => Err(self.misplaced(found, raw)),
        }
    }

    /// The error for a known parameter in the wrong place.
    fn misplaced(&self, found: ParamType, raw: RawParam<'_>) -> DecodeError {
        if self.seen & found.bit() != 0 {
            DecodeError::DuplicateParameter {
                context: self.context,
                param: found,
                tlv: raw.to_bytes(),
            }
        } else {
            DecodeError::UnexpectedParameter {
                context: self.context,
                found,
                tlv: raw.to_bytes(),
            }
        }
    }
}

/// Reads big-endian fixed fields from the front of a byte slice.
pub(crate) struct Fields<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Fields<'a> {
    /// Fixed fields of `what`, which needs at least `needed` bytes.
    #[inline]
    pub(crate) fn new(
        buf: &'a [u8],
        what: &'static str,
        needed: usize,
    ) -> Result<Self, DecodeError> {
        if buf.len() < needed {
            return Err(DecodeError::Truncated {
                what,
                needed,
                available: buf.len(),
            });
        }
        Ok(Self { buf, what })
    }

    #[inline]
    fn take<const N: usize>(&mut self) -> [u8; N] {
        // `new` checked the total length; a shorter buffer here is a bug in
        // the caller's `needed`, which the tests of every decoder catch.
        let (head, rest) = self
            .buf
            .split_first_chunk::<N>()
            .unwrap_or_else(|| panic!("fixed fields of {} overrun", self.what));
        self.buf = rest;
        *head
    }

    #[inline]
    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take())
    }

    #[inline]
    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take())
    }

    /// What follows the fixed fields.
    #[inline]
    pub(crate) fn rest(self) -> &'a [u8] {
        self.buf
    }
}

/// Starts a parameter of type `param`: writes its header with a length to be
/// patched by [`end_param`], and returns where it starts.
pub(crate) fn begin_param(dst: &mut BytesMut, param: ParamType) -> usize {
    let start = dst.len();
    dst.put_u16(param.wire_type());
    dst.put_u16(0);
    start
}

/// Ends the parameter begun at `start`: patches its length (everything
/// written since, excluding its own padding) and pads it to four bytes.
pub(crate) fn end_param(dst: &mut BytesMut, start: usize) -> Result<(), EncodeError> {
    patch_length(dst, start + 2, dst.len() - start, "parameter")?;
    pad(dst);
    Ok(())
}

/// Writes `length` into the 16-bit field at `at`.
pub(crate) fn patch_length(
    dst: &mut BytesMut,
    at: usize,
    length: usize,
    what: &'static str,
) -> Result<(), EncodeError> {
    let field = u16::try_from(length).map_err(|_| EncodeError::TooLarge { what, length })?;
    dst[at..at + 2].copy_from_slice(&field.to_be_bytes());
    Ok(())
}

/// Pads `dst` with zero bytes to a multiple of four.
pub(crate) fn pad(dst: &mut BytesMut) {
    let n = padded(dst.len()) - dst.len();
    dst.put_bytes(0, n);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(buf: &[u8]) -> (Result<Vec<ParamType>, DecodeError>, Vec<ErrorCause>) {
        let mut reports = Vec::new();
        let mut reader = ParamReader::new(buf, "test", &mut reports);
        let mut out = Vec::new();
        let result = loop {
            match reader.take_any() {
                Ok(Some((param, _))) => out.push(param),
                Ok(None) => break Ok(out),
                Err(e) => break Err(e),
            }
        };
        (result, reports)
    }

    #[test]
    fn action_bits_skip_and_report() {
        // 0x8123 skip silently, 0xC124 skip and report, then a PE id.
        let buf = hex::decode("8123000500000000c124000800000001000e000800000007").unwrap();
        let (result, reports) = read_all(&buf);
        assert_eq!(result.unwrap(), vec![ParamType::PeIdentifier]);
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].code, CauseCode::UNRECOGNIZED_PARAMETER);
        assert_eq!(&reports[0].info[..], &buf[8..16]);
    }

    #[test]
    fn action_bits_stop() {
        for (raw, report) in [(0x0123u16, false), (0x4123, true)] {
            let mut buf = raw.to_be_bytes().to_vec();
            buf.extend_from_slice(&[0, 4]);
            let (result, _) = read_all(&buf);
            assert_eq!(
                result.unwrap_err(),
                DecodeError::UnrecognizedParameter {
                    param_type: raw,
                    report,
                    tlv: Bytes::from(buf.clone()),
                }
            );
        }
    }

    #[test]
    fn known_ids_ignore_action_bits() {
        let buf = hex::decode("c00e000800000007").unwrap();
        let (result, reports) = read_all(&buf);
        assert_eq!(result.unwrap(), vec![ParamType::PeIdentifier]);
        assert!(reports.is_empty());
    }

    #[test]
    fn last_parameter_may_lack_padding() {
        // Pool handle "abc": length 7, no padding byte at the end.
        let buf = hex::decode("0009000761626300").unwrap();
        assert_eq!(read_all(&buf[..7]).0.unwrap(), vec![ParamType::PoolHandle]);
        assert_eq!(read_all(&buf).0.unwrap(), vec![ParamType::PoolHandle]);
    }

    #[test]
    fn short_header_and_overrun() {
        let (r, _) = read_all(&[0, 9, 0]);
        assert!(matches!(
            r,
            Err(DecodeError::Truncated {
                what: "parameter header",
                needed: 4,
                available: 3
            })
        ));
        let (r, _) = read_all(&hex::decode("0009000c61626364").unwrap());
        assert!(matches!(
            r,
            Err(DecodeError::ParameterOverrun {
                param_type: 9,
                declared: 12,
                available: 8,
                ..
            })
        ));
        let (r, _) = read_all(&hex::decode("00090002").unwrap());
        assert!(matches!(
            r,
            Err(DecodeError::ParameterLength {
                param: ParamType::PoolHandle,
                length: 2,
                ..
            })
        ));
    }

    #[test]
    fn writer_pads_and_patches() {
        let mut dst = BytesMut::new();
        let start = begin_param(&mut dst, ParamType::PoolHandle);
        dst.put_slice(b"abcde");
        end_param(&mut dst, start).unwrap();
        assert_eq!(
            &dst[..],
            &hex::decode("000900096162636465000000").unwrap()[..]
        );
    }
}
