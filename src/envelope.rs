//! Plain views of a message's envelope that the protocol side hands to delivery: no SMTP
//! knowledge, no allocation (the text stays in the session's buffers).

/// Recipients in RCPT order, each exactly as the client wrote it: all of them back to back in
/// `text`, recipient `i` ending at `ends[i]`.
#[derive(Clone, Copy, Debug)]
pub struct Recipients<'a> {
    text: &'a str,
    ends: &'a [usize],
}

impl<'a> Recipients<'a> {
    /// A view of `text` cut at `ends` (increasing offsets, each on a character boundary).
    pub fn new(text: &'a str, ends: &'a [usize]) -> Recipients<'a> {
        debug_assert!(ends.windows(2).all(|w| w[0] <= w[1]));
        debug_assert!(ends.last().is_none_or(|&end| end == text.len()));
        Recipients { text, ends }
    }

    /// Number of recipients.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The recipients in order.
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + 'a {
        let Recipients { text, ends } = *self;
        (0..ends.len()).map(move |i| &text[if i == 0 { 0 } else { ends[i - 1] }..ends[i]])
    }
}

/// What a delivery sink learns about a message when it begins.
#[derive(Clone, Copy, Debug)]
pub struct MessageStart<'a> {
    /// The queue ID the client will be told in the `250`.
    pub id: &'a str,
    /// The reverse-path without angle brackets ("" for the null sender).
    pub sender: &'a str,
    pub recipients: Recipients<'a>,
}
