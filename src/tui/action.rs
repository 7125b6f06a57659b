//! Everything a person can ask of the debugger, named apart from the keys that ask it (the
//! keymap binds keys to these; the app says what each one does), so that neither of those two
//! needs the other.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Quit,
    Cancel,
    Help,
    PrevStage,
    NextStage,
    Down,
    Up,
    ToggleFocus,
    Select,
    /// The n-th prediction (0-based) becomes the target.
    Pick(usize),
    Search,
    NextMethod,
    PrevMethod,
    StageGrid,
    MethodGrid,
    CycleView,
    /// With `--vs`: A only / A, B and B − A / B − A alone.
    CycleCompare,
    OpacityUp,
    OpacityDown,
    NextTheme,
    ToggleAugSmooth,
    ToggleEigenSmooth,
    Save,
    /// In the image view of a data set: the next / previous image in the table's order.
    NextImage,
    PrevImage,
    // The data set's table.
    Top,
    Bottom,
    PageUp,
    PageDown,
    Open,
    SortBy(super::table::Column),
    WrongOnly,
    /// `sweep --vs` rows: only the broken, then only the fixed, then all.
    CycleChange,
    SameTrue,
    SamePredicted,
    Confusions,
}

/// Where a key binding applies: the same key can mean one thing over an image and another over
/// the data set's table (`g`: the stage grid / the first row), as in lazygit's panels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Context {
    Everywhere,
    Image,
    Table,
}
