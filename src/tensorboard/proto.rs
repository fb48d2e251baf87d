//! The few protocol-buffer messages of TensorBoard's event files, encoded by
//! hand: `Event` (wall time, step, and a file version, a summary or a
//! session log), `Summary.Value` with a scalar or an image.

/// Appends a varint.
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a field's key: its number and wire type.
fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, u64::from(field) << 3 | u64::from(wire));
}

fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(out, field, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    key(out, field, 0);
    varint(out, v);
}

/// What an event carries besides its time and step.
pub enum What<'a> {
    /// The first event of every file: `brain.Event:2`.
    FileVersion,
    /// A `Summary` of these values.
    Summary(&'a [Value<'a>]),
    /// A `SessionLog` START: readers drop the events of later steps written
    /// before it (a resumed run's abandoned tail).
    Start,
}

/// One `Summary.Value`.
pub enum Value<'a> {
    Scalar(&'a str, f32),
    /// A PNG of width × height, RGB.
    Image {
        tag: &'a str,
        png: &'a [u8],
        width: u32,
        height: u32,
    },
}

/// An `Event` message.
pub fn event(wall_time: f64, step: u64, what: &What) -> Vec<u8> {
    let mut out = Vec::new();
    key(&mut out, 1, 1);
    out.extend_from_slice(&wall_time.to_le_bytes());
    varint_field(&mut out, 2, step);
    match what {
        What::FileVersion => bytes_field(&mut out, 3, b"brain.Event:2"),
        What::Summary(values) => {
            let mut summary = Vec::new();
            for v in *values {
                bytes_field(&mut summary, 1, &value(v));
            }
            bytes_field(&mut out, 5, &summary);
        }
        What::Start => {
            let mut log = Vec::new();
            varint_field(&mut log, 1, 1);
            bytes_field(&mut out, 6, &log);
        }
    }
    out
}

fn value(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    match *v {
        Value::Scalar(tag, x) => {
            bytes_field(&mut out, 1, tag.as_bytes());
            key(&mut out, 2, 5);
            out.extend_from_slice(&x.to_le_bytes());
        }
        Value::Image {
            tag,
            png,
            width,
            height,
        } => {
            bytes_field(&mut out, 1, tag.as_bytes());
            let mut image = Vec::new();
            varint_field(&mut image, 1, u64::from(height));
            varint_field(&mut image, 2, u64::from(width));
            varint_field(&mut image, 3, 3);
            bytes_field(&mut image, 4, png);
            bytes_field(&mut out, 4, &image);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_little_endian_groups_of_seven_bits() {
        // The protocol-buffer documentation's example: 150 is 96 01.
        let mut out = Vec::new();
        varint(&mut out, 150);
        assert_eq!(out, [0x96, 0x01]);
        out.clear();
        varint(&mut out, 1);
        assert_eq!(out, [0x01]);
    }

    #[test]
    fn a_scalar_event_is_encoded_field_by_field() {
        let bytes = event(1.5, 300, &What::Summary(&[Value::Scalar("loss", 0.25)]));
        let mut want = vec![0x09];
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.extend_from_slice(&[0x10, 0xac, 0x02]); // step 300
        let mut value = vec![0x0a, 4];
        value.extend_from_slice(b"loss");
        value.push(0x15);
        value.extend_from_slice(&0.25f32.to_le_bytes());
        want.extend_from_slice(&[0x2a, value.len() as u8 + 2, 0x0a, value.len() as u8]);
        want.extend_from_slice(&value);
        assert_eq!(bytes, want);
    }
}
